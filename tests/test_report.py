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


def test_seed_summary_of_a_folder_without_a_grid_groups_cells_by_setting(tmp_path):
    """Cells trained one by one (`slotlib train --out DIR/CELL`) have no grid.yaml: the settings are the
    cell names less their seeds, not one mean over every cell."""
    write_cell(tmp_path, "scouter_px96_seed0", "scouter", 0, 0.90, 0.89)
    write_cell(tmp_path, "scouter_px96_seed1", "scouter", 1, 0.92, 0.90)
    write_cell(tmp_path, "scouter_seed0", "scouter", 0, 0.80, 0.81)
    table = report.collect(tmp_path)
    assert report.grid_axes(tmp_path) == []
    summary = report.seed_summary(table, [])
    assert list(summary.index) == ["scouter_px96", "scouter"] and summary.index.name == "setting"
    assert summary.loc["scouter_px96", "seeds"] == 2
    assert summary.loc["scouter_px96", "test_mean"] == pytest.approx(0.895)


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


def write_discovery_cell(root, cell_id, alpha, posterior, minutes, masks=True):
    """A finished object-discovery cell as fit writes it: metrics.json, history.csv and masks.npz."""
    folder = root / cell_id
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "status": "done", "kind": "discovery", "params": {"eval_masks": "alpha"}, "val_fg_ari": alpha - 0.01,
        "fg_ari": alpha, "fg_ari_alpha": alpha, "fg_ari_posterior": posterior, "fg_ari_std": 0.1, "test_mse": 0.02,
        "steps_done": 100, "train_seconds": 60.0 * minutes, "steps_per_second": 10.0, "n_params": 1000, "error": None}))
    rows = ["step,train_mse,lr,seconds,steps_per_second,val_fg_ari,val_fg_ari_alpha,val_fg_ari_posterior,val_mse",
            "50,0.1,0.001,30.0,10.0,,,,", f"100,0.05,0.001,{60.0 * minutes},10.0,{alpha},{alpha},{posterior},0.02"]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")
    if masks:
        rng = np.random.default_rng(0)
        seg = rng.integers(0, 4, size=(3, 8, 8), dtype=np.uint8)
        np.savez_compressed(folder / "masks.npz", images=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),
                            recon=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8), true_masks=seg,
                            alpha_segmentation=seg, posterior_segmentation=seg, alpha_fg_ari=np.ones(3),
                            posterior_fg_ari=np.ones(3))
    return folder


@pytest.fixture
def discovery_dir(tmp_path):
    root = tmp_path / "discovery"
    write_discovery_cell(root, "seed0-aa", 0.80, 0.90, 10)
    write_discovery_cell(root, "seed1-bb", 0.70, 0.85, 12, masks=False)
    write_discovery_cell(root, "black_seed0-cc", 0.60, 0.65, 11)
    return root


def test_discovery_table_ranks_on_validation_and_summarises_seeds(discovery_dir):
    from slotlib.runs import discovery_report as dr

    table = dr.collect(discovery_dir)
    summary = dr.seed_summary(table)
    assert list(summary["setting"]) == ["base", "black"] and list(summary["seeds"]) == [2, 1]
    assert summary.loc[0, "alpha_mean"] == pytest.approx(0.75) and summary.loc[0, "alpha_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert summary.loc[0, "train_minutes"] == pytest.approx(11)
    assert list(dr.ranked(table)["cell"]) == ["seed0-aa", "seed1-bb", "black_seed0-cc"]
    assert dr.first_seed_per_setting(table) == ["seed0-aa", "black_seed0-cc"]
    assert dr.drawn_cells(table) == [("seed0-aa", "the smallest seed number"),      # the worst seed is drawn too
                                     ("seed1-bb", "the lowest test FG-ARI of the setting's 2 seeds"),
                                     ("black_seed0-cc", "its only seed")]
    assert "base</b> (2 seeds): <b>test FG-ARI 0.750 ± 0.071 with alpha masks" in dr.headline(table)
    fig = dr.plot_fg_ari_minutes(discovery_dir, table)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 * 3                                 # per cell: alpha, posterior and the test dot
    assert lines[3].get_color() == lines[6].get_color() != lines[0].get_color()   # cells by name: black first


def test_report_of_an_object_discovery_grid(discovery_dir):
    write_discovery_cell(discovery_dir / "seed0-aa", "black", 0.5, 0.6, 5)   # the cell's black-background control
    assert main(["report", str(discovery_dir)]) == 0
    page = (discovery_dir / "report.html").read_text()
    assert "Object-discovery report" in page and "FG-ARI against training minutes" in page
    assert page.count('src="data:image/png;base64') == 4       # the curve, two settings' masks, one control's
    from slotlib.runs.discovery_report import mask_folders
    assert [title for title, _ in mask_folders(discovery_dir, "seed0-aa")] == [
        "seed0-aa", "seed0-aa, its black-background control"]       # the control's title names it
    assert "seed1-bb (the lowest test FG-ARI of the setting" in page   # drawn, here without its masks.npz
    assert "Traceback" not in page and "<script src" not in page


def test_the_report_draws_a_settings_worst_seed_once_when_it_is_the_smallest(tmp_path):
    from slotlib.runs import discovery_report as dr

    write_discovery_cell(tmp_path, "seed0-aa", 0.50, 0.60, 10)
    write_discovery_cell(tmp_path, "seed1-bb", 0.70, 0.80, 10)
    write_discovery_cell(tmp_path, "seed2-cc", 0.90, 0.95, 10)
    assert dr.drawn_cells(dr.collect(tmp_path)) == [
        ("seed0-aa", "the smallest seed number and the lowest test FG-ARI of the setting's 3 seeds")]


def test_a_damaged_masks_file_is_named_and_the_report_goes_on(discovery_dir):
    from slotlib.runs.folder import DamagedRunFile, read_mask_samples

    np.savez_compressed(discovery_dir / "seed0-aa" / "masks.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DamagedRunFile, match="masks.npz.*no 'recon' array"):
        read_mask_samples(discovery_dir / "seed0-aa")
    assert main(["report", str(discovery_dir)]) == 0
    page = (discovery_dir / "report.html").read_text()
    assert "no &#x27;recon&#x27; array" in page or "no 'recon' array" in page


def test_report_refuses_a_folder_mixing_discovery_and_classifier_cells(discovery_dir, capsys):
    write_cell(discovery_dir, "scouter_seed0-dd", "scouter", 0, 0.9, 0.9)
    assert main(["report", str(discovery_dir)]) == 2
    err = capsys.readouterr().err
    assert "object-discovery cells beside classifier cells" in err and not (discovery_dir / "report.html").exists()


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
