"""Explanation metrics, attention figures, the explorer, and the attention notebook on a tiny checkpoint."""


import numpy as np
import pytest
import torch

from slotlib.classify import attention_plots, explain
from slotlib.runs.grid import NOTEBOOKS, execute_notebook


def region_model(region):
    """Class 0's probability rises with the brightness inside ``region``; the rest of the tile is ignored."""
    def predict(x):
        evidence = (x[:, :, region].mean((1, 2)) - 0.5) * 10
        return torch.stack([evidence.sigmoid(), 1 - evidence.sigmoid()], dim=1)
    return predict


def test_deletion_and_insertion_reward_the_true_evidence():
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:5, 2:5] = True
    images = torch.ones(3, 3, 8, 8)
    target = torch.zeros(3, dtype=torch.long)
    black, blur = torch.zeros_like(images), torch.zeros_like(images)
    right = region.float().expand(3, 8, 8) + 0.01 * torch.rand(3, 8, 8)
    wrong = (~region).float().expand(3, 8, 8) + 0.01 * torch.rand(3, 8, 8)
    d_right, i_right = explain.deletion_insertion(region_model(region), images, right, target, black, blur, 8)
    d_wrong, i_wrong = explain.deletion_insertion(region_model(region), images, wrong, target, black, blur, 8)
    assert (d_right < d_wrong).all() and (i_right > i_wrong).all()
    assert ((0 <= d_right) & (d_right <= 1) & (0 <= i_right) & (i_right <= 1)).all()


def test_metrics_json_holds_the_explanation_metrics(tiny_run):
    _, metrics = tiny_run
    assert metrics["explained_tiles"] == 10
    assert 0 < metrics["area_size"] < 2  # a class map sums its 2 slots' sigmoid attention, each in (0, 1)
    assert 0 <= metrics["deletion_auc"] <= 1 and 0 <= metrics["insertion_auc"] <= 1


def test_open_run_predictions_and_figures(tiny_run, isolated_cache):
    out, metrics = tiny_run
    exp = explain.open_run(out)
    pred = explain.predict_split(exp, "test")
    assert pred.slots.shape[1] == 20 and pred.classes.shape[1] == 10
    assert (pred.labels == pred.preds).mean() == pytest.approx(metrics["test_acc"])  # the best weights, again
    for fig in (attention_plots.plot_tiles(pred, exp.class_names, n=3), attention_plots.plot_mean_attention(pred, exp.class_names),
                attention_plots.plot_correct_and_wrong(pred, exp.class_names, n=2)):
        assert fig.axes


def test_explorer_updates_on_every_control(tiny_run, isolated_cache):
    out, _ = tiny_run
    pred = explain.predict_split(explain.open_run(out), "test")
    box = attention_plots.explorer(pred, [f"c{k}" for k in range(10)])
    (cls, only_wrong), (tile, slot), _output = box.children[0].children, box.children[1].children, box.children[2]
    assert tile.max == len(pred.labels) - 1
    cls.value = int(pred.labels[0])
    assert tile.max == int((pred.labels == pred.labels[0]).sum()) - 1
    slot.value = 3
    only_wrong.value = True
    assert tile.max == max(0, int(((pred.labels == pred.labels[0]) & (pred.labels != pred.preds)).sum()) - 1)


def test_attention_notebook_runs_on_a_tiny_checkpoint(tiny_run, isolated_cache, tmp_path):
    out, _ = tiny_run
    execute_notebook(NOTEBOOKS / "attention.ipynb", tmp_path / "attention.ipynb",
                     {"run_dir": str(out), "n_tiles": 3, "max_tiles": 30, "device": "cpu"})
    import nbformat
    executed = nbformat.read(tmp_path / "attention.ipynb", as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 3


def test_a_run_writes_the_report_maps_of_fixed_test_tiles(tiny_run):
    from slotlib.runs.folder import read_maps

    out, metrics = tiny_run
    maps = read_maps(out)                                   # numpy alone: what the report reads
    k = len(metrics["class_names"])
    assert list(maps["class_names"]) == metrics["class_names"] and str(maps["head"]) == "scouter"
    in_test = [c for c, row in enumerate(metrics["test_confusion"]) if sum(row)]
    assert sorted(set(maps["labels"].tolist())) == in_test                  # every class of the test split shown
    assert (np.bincount(maps["labels"], minlength=k) <= 2).all()            # heatmap_tiles: 2 per class
    m = len(maps["labels"])
    assert maps["tiles"].shape == (m, 64, 64, 3) and maps["tiles"].dtype == np.uint8
    assert maps["maps"].shape[:2] == (m, k) and maps["mean_maps"].shape == (k, *maps["maps"].shape[2:])
    assert np.allclose(maps["probs"].astype(float).sum(1), 1, atol=1e-2)
    assert (maps["preds"] == maps["probs"].argmax(1)).all()
    assert ((maps["maps"] >= 0) & (maps["maps"] <= 2)).all()               # 2 slots' sigmoid attention summed
    assert (out / "maps.npz").stat().st_size < 500_000


def test_maps_can_be_rewritten_from_best_pt(tiny_run, tmp_path, tiny_root, monkeypatch):
    import shutil

    from slotlib.classify.explain import main as explain_main
    from slotlib.runs.folder import read_maps

    out, _ = tiny_run
    copy = tmp_path / "cell"
    shutil.copytree(out, copy)
    before = read_maps(copy)
    (copy / "maps.npz").unlink()
    monkeypatch.setenv("SLOTLIB_CACHE", str(tmp_path / "cache"))
    assert explain_main([str(copy)]) == 0
    after = read_maps(copy)
    assert (after["indices"] == before["indices"]).all()
    assert np.allclose(after["maps"].astype(float), before["maps"].astype(float), atol=1e-2)


def test_open_run_with_another_device_setting(tiny_run):
    """'device' says where, not what: a cell trained with device 'cpu' opens with 'auto' (and 'auto' with 'cpu',
    as attention.ipynb does), instead of being refused as a run of different parameters."""
    from slotlib.classify import explain

    out, _ = tiny_run
    exp = explain.open_run(out, device="auto")
    assert exp.device.type in ("cpu", "cuda", "mps")


def test_best_finished_cell_picks_the_highest_validation_accuracy(tmp_path):
    import json

    from slotlib.config import ConfigError
    from slotlib.runs.folder import best_finished_cell

    cells = {"a": ("done", 0.5), "b": ("done", 0.8), "c": ("done", 0.8), "d": ("failed", 0.9),
             "e": ("running", 0.95), "g": ("done", None)}
    for name, (status, acc) in cells.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"status": status, "best_val_acc": acc}))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "metrics.json").write_text("{garbage")   # damaged: passed over
    assert best_finished_cell(tmp_path) == tmp_path / "b"        # a tie goes to the first by name
    for empty in (tmp_path / "b", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match=r"^no finished cell in .*: run `make demo` first"):
            best_finished_cell(empty)


def test_attention_notebook_opens_the_best_cell_of_a_demo_like_grid(tiny_root, isolated_cache, tmp_path):
    """run_dir = None (the default): attention.ipynb opens the best finished cell of grid_dir, as it does
    for outputs/demo after `make demo`, whose cell ids change with the defaults (issue 31)."""
    import nbformat
    from test_grid import grid_file   # tests/test_grid.py's tiny grids

    from slotlib.runs.folder import best_finished_cell
    from slotlib.runs.grid import run_grid

    grid = tmp_path / "demo"
    final = run_grid(grid_file(tmp_path, tiny_root, {"head": ["scouter", "slot"]}), grid, jobs=2, echo=print)
    assert sorted(final.values()) == ["done", "done"]
    execute_notebook(NOTEBOOKS / "attention.ipynb", tmp_path / "attention.ipynb",
                     {"grid_dir": str(grid), "n_tiles": 2, "max_tiles": 30, "device": "cpu"})
    executed = nbformat.read(tmp_path / "attention.ipynb", as_version=4)
    shown = [o["data"]["text/markdown"] for c in executed.cells if c.cell_type == "code" for o in c.outputs
             if "text/markdown" in o.get("data", {})]
    assert shown and shown[0].startswith(f"**{best_finished_cell(grid).name}**")
