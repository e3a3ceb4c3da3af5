"""The report reads only cell files: synthetic cells are enough to test it end to end."""

import json

import numpy as np
import pytest
import yaml

from slotlib.cli import main
from slotlib.runs import report, report_figures
from slotlib.runs.folder import GRID_COPY

CLASSES = ["A", "B"]


def write_maps(folder, head, k=2, per_class=1, grid=7):
    """A maps.npz as a run writes it: class c's map lights up the tile's upper left for c == 0."""
    rng = np.random.default_rng(0)
    m = k * per_class
    maps = rng.uniform(0, 0.2, size=(m, k, grid, grid)).astype(np.float16)
    maps[0, 0, :3, :3] = 0.9
    probs = np.full((m, k), 0.1 / (k - 1), dtype=np.float16)
    probs[np.arange(m), np.arange(m) % k] = 0.9
    np.savez_compressed(folder / "maps.npz", tiles=rng.integers(0, 255, size=(m, 64, 64, 3), dtype=np.uint8),
                        labels=np.arange(m) % k, preds=np.arange(m) % k, probs=probs, maps=maps,
                        mean_maps=maps.astype(np.float32).mean(0), class_names=np.array(CLASSES),
                        head=np.array(head), indices=np.arange(m))


def write_cell(root, cell_id, head, seed, val, test, status="done", error=None):
    folder = root / cell_id
    folder.mkdir(parents=True)
    done = status == "done"
    (folder / "metrics.json").write_text(json.dumps({
        "status": status, "cell_id": cell_id, "params": {"head": head, "seed": seed},
        "best_val_acc": val, "test_acc": test, "best_stage": 2, "best_epoch": 3, "n_params": 1000 if head == "linear"
        else 2000, "wall_seconds": 10.0, "train_images_per_second": 100.0, "error": error,
        **({"test_confusion": [[9, 1], [2, 8]], "class_names": CLASSES} if done else {})}))
    if done:
        write_maps(folder, head)
    rows = ["stage,epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_second"]
    rows += [f"{1 if e < 2 else 2},{e},1.0,0.5,1.0,{(val or 0) * (e + 1) / 4:.4f},0.001,1.0,100" for e in range(4)]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def grid_dir(tmp_path):
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({"base": {}, "grid": {"head": ["scouter", "linear"]},
                                                        "seeds": [0, 1]}))
    write_cell(tmp_path, "scouter_seed0-aa", "scouter", 0, 0.90, 0.89)
    write_cell(tmp_path, "scouter_seed1-bb", "scouter", 1, 0.92, 0.90)
    write_cell(tmp_path, "linear_seed0-cc", "linear", 0, 0.80, 0.81)
    write_cell(tmp_path, "linear_seed1-dd", "linear", 1, None, None, status="failed",
               error="NonFiniteLossError: loss became nan in stage2, epoch 3, batch 7")
    return tmp_path


def test_collect_rank_and_seed_summary(grid_dir):
    table = report.collect(grid_dir)
    assert len(table) == 4 and report.grid_axes(grid_dir) == ["head", "seed"]
    assert list(report.ranked(table)["cell"]) == ["scouter_seed1-bb", "scouter_seed0-aa", "linear_seed0-cc"]
    summary = report.seed_summary(table, ["head", "seed"])
    assert summary.loc["scouter", "seeds"] == 2
    assert summary.loc["scouter", "val_mean"] == pytest.approx(0.91)
    assert summary.loc["scouter", "val_std"] == pytest.approx(np.std([0.90, 0.92], ddof=1))
    assert list(report.failed(table)["cell"]) == ["linear_seed1-dd"]


def test_report_renders_html_with_plots(grid_dir, capsys):
    assert main(["report", str(grid_dir)]) == 0
    page = (grid_dir / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 3
    assert "slotlibSort" in page and "scouter_seed1-bb" in page
    assert "loss became nan in stage2" in page  # failed cells are shown with their error
    assert "report.collect(" not in page  # code is hidden


def test_report_leads_with_the_best_cell_and_the_reference_in_percent(grid_dir):
    table = report.collect(grid_dir)
    line = report.headline(table, ["head", "seed"])
    assert "scouter_seed1-bb" in line and "test 90.00%" in line and "validation 92.00%" in line
    assert "over 2 seeds: test 89.50% ± 0.71%" in line and "98.54%" in line and "2.66M" in line
    summary = report.table_html(report.seed_summary(table, ["head", "seed"]).reset_index(), sortable=False)
    assert "91.00%" in summary and "–" in summary and "nan" not in summary.lower()   # one linear seed: no spread
    assert "overflow-x:auto" in summary
    assert [report.pct(v) for v in (0.98543, None, float("nan"))] == ["98.54%", "–", "–"]


def test_tta_columns_only_when_a_cell_has_them(grid_dir):
    assert not {"test_acc_plain", "val_acc_tta"} & set(report.collect(grid_dir).columns)
    path = grid_dir / "scouter_seed1-bb" / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "test_acc_plain": 0.885, "val_acc_tta": 0.93}))
    table = report.collect(grid_dir)
    assert table.set_index("cell").loc["scouter_seed1-bb", "test_acc_plain"] == 0.885
    assert "plain 88.50%" in report.headline(table, ["head", "seed"])


def test_report_draws_heatmaps_confusion_and_per_class_accuracy(grid_dir):
    assert report.best_per_head(report.collect(grid_dir)) == ["scouter_seed1-bb", "linear_seed0-cc"]
    per_class = report.per_class_table(json.loads((grid_dir / "scouter_seed0-aa" / "metrics.json").read_text()))
    assert list(per_class["test accuracy"]) == pytest.approx([0.9, 0.8])
    assert list(per_class["most confused with"]) == ["B", "A"]
    assert main(["report", str(grid_dir)]) == 0
    page = (grid_dir / "report.html").read_text()
    assert "scouter_seed1-bb (scouter head, test 90.00%)" in page and "linear_seed0-cc (linear head" in page
    assert page.count("data:image/png;base64") >= 2 * 2 + 1 + 3   # heatmaps and mean maps of 2 cells, confusion, 3 plots
    assert "most confused with" in page
    assert "https://cdnjs" not in page and "require.min.js" not in page   # offline: nothing fetched from a CDN


def test_a_missing_or_damaged_maps_file_is_said_and_the_report_goes_on(grid_dir):
    (grid_dir / "scouter_seed1-bb" / "maps.npz").write_bytes(b"garbage")
    (grid_dir / "linear_seed0-cc" / "maps.npz").unlink()
    assert main(["report", str(grid_dir)]) == 0
    page = (grid_dir / "report.html").read_text()
    assert "maps.npz is damaged (not a numpy archive" in page
    assert "maps.npz is missing" in page and "python -m slotlib.classify.explain" in page


def test_report_of_missing_folder_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_compare_curves_colours_by_group_and_styles_by_seed(grid_dir):
    from slotlib.classify.plots import compare_curves

    runs = {"scouter_seed0": grid_dir / "scouter_seed0-aa", "scouter_seed1": grid_dir / "scouter_seed1-bb",
            "linear_seed0": grid_dir / "linear_seed0-cc"}
    fig = compare_curves(runs)
    lines = {line.get_label(): line for line in fig.axes[1].get_lines()}
    assert set(lines) == set(runs)
    assert lines["scouter_seed0"].get_color() == lines["scouter_seed1"].get_color() != lines["linear_seed0"].get_color()
    assert lines["scouter_seed0"].get_linestyle() != lines["scouter_seed1"].get_linestyle()
    assert list(lines["linear_seed0"].get_ydata()) == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_report_refuses_object_discovery_folders_in_one_sentence(tmp_path, capsys):
    cell = tmp_path / "base-aa"
    cell.mkdir()
    (cell / "metrics.json").write_text(json.dumps({"status": "done", "kind": "discovery", "fg_ari": 0.8}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "object-discovery cells" in err and "slotlib status" in err and not (tmp_path / "report.html").exists()


def test_grid_axes_of_a_list_of_products(tmp_path):
    (tmp_path / GRID_COPY).write_text(yaml.safe_dump(
        {"grid": [{"head": ["scouter", "linear"]}, {"head": ["scouter"], "lambda_area": [0.0]}], "seeds": [0, 1]}))
    assert report.grid_axes(tmp_path) == ["head", "lambda_area", "seed"]


def test_axis_labels_name_null_and_whole_numbers_as_written():
    assert [report_figures.axis_label(v) for v in (None, float("nan"), 32.0, 0.05, "scouter", True)] == [
        "null", "null", "32", "0.05", "scouter", "True"]


def test_html_in_folder_names_and_values_never_becomes_a_live_element(tmp_path):
    """A report is a file people send each other: every string from a folder, a file or a parameter is
    escaped wherever it appears, Markdown headings included (issue 34)."""
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({"base": {}, "grid": {"head": ["scouter"]}}))
    evil = "<img src=x onerror=alert(1)>"
    write_cell(tmp_path, f"{evil}_seed0-ee", "scouter", 0, 0.9, 0.9)
    write_cell(tmp_path, "<script>alert(2)</script>-ff", "linear", 0, 0.8, 0.8)
    write_cell(tmp_path, "failed-gg", "linear", 1, None, None, status="failed", error="<b onmouseover=alert(3)>x</b>")
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert live_elements(page) == []
    assert "&lt;img src=x onerror=alert" in page   # shown as text


def live_elements(page: str) -> list[str]:
    """Elements a page would run from the test's strings: a tag whose on* handler calls ``alert``, an
    ``img`` of ``src=x``, or a script that calls ``alert``. Parsed, not searched: a Markdown renderer
    writes a raw tag back with its attributes reordered (``<img onerror=... src="x"/>``)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Finder(HTMLParser):
        in_script = False

        def handle_starttag(self, tag, attrs):
            names = dict(attrs)
            if any(k.startswith("on") and "alert(" in (v or "") for k, v in names.items()) or (
                    tag == "img" and names.get("src") == "x"):
                found.append(f"<{tag} {attrs}>")
            self.in_script = tag == "script"

        def handle_data(self, data):
            if self.in_script and "alert(" in data:
                found.append(f"<script>{data[:40]}")

        def handle_endtag(self, tag):
            self.in_script = False

    Finder().feed(page)
    return found
