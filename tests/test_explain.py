"""Explanation metrics, attention figures, the explorer, and the attention notebook on a tiny checkpoint."""


import pytest
import torch

from slotlib.classify import attention_plots, explain
from slotlib.classify import fit as training
from slotlib.config import Config
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


@pytest.fixture(scope="module")
def tiny_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "cell"
    cfg = Config.from_params({"data_root": str(tiny_root), "image_size": 64, "batch_size": 16, "pretrained": False,
                              "hidden_dim": 32, "slot_iters": 2, "slots_per_class": 2, "stage1_epochs": 1,
                              "stage2_epochs": 1, "device": "cpu", "explain_tiles": 10})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLOTLIB_CACHE", str(tmp_path_factory.getbasetemp() / "slotlib_cache"))
        metrics = training.train(cfg, out, progress=False)
    return out, metrics


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
    (cls, only_wrong), (tile, slot), output = box.children[0].children, box.children[1].children, box.children[2]
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
