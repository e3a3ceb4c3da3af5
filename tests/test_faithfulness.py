"""The explanation benchmark (slotlib.classify.faithfulness): its hand-written parts against cases
computed by hand, and one small run end to end."""

import json

import numpy as np
import pytest
import torch

from slotlib.classify.faithfulness import (assemble, centre_prior, mosaics, quadrant_shares, randomised,
                                           spearman_rows)
from slotlib.runs.explanations import METHODS, METRICS, paired, results_table


def test_quadrant_shares_by_hand():
    maps = torch.zeros(3, 4, 4)
    maps[0, :2, :2] = 1.0                      # all mass in the top left quadrant
    maps[1] = 1.0                              # spread evenly
    maps[1, 2:, 2:] = 3.0                      # bottom right holds 12 of 24
    maps[2] = -1.0                             # no positive mass: chance
    shares = quadrant_shares(maps, torch.tensor([0, 3, 1]))
    assert shares.tolist() == pytest.approx([1.0, 0.5, 0.25])
    # negative values are not mass: a map of +1 in its quadrant and -5 elsewhere puts all its mass there
    neg = torch.full((1, 4, 4), -5.0)
    neg[0, :2, 2:] = 1.0
    assert quadrant_shares(neg, torch.tensor([1])).item() == pytest.approx(1.0)


def test_spearman_rows_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(5, 30)).astype(float)    # many ties
    b = a + rng.normal(0, 1, size=a.shape)
    ours = spearman_rows(a, b)
    for row in range(5):
        assert ours[row] == pytest.approx(spearmanr(a[row], b[row]).statistic)
    assert np.isnan(spearman_rows(np.ones((1, 5)), np.arange(5.0)[None])[0])   # a constant row


def test_mosaics_take_four_classes_and_assemble_row_major():
    labels = np.repeat(np.arange(6), 3)
    picks, classes = mosaics(labels, 50, np.random.default_rng(1))
    assert picks.shape == classes.shape == (50, 4)
    assert all(len(set(row)) == 4 for row in classes)
    assert (labels[picks] == classes).all()
    quads = torch.stack([torch.full((3, 2, 2), float(q)) for q in range(4)])[None]  # [1,4,3,2,2]
    mosaic = assemble(quads)[0, 0]
    assert mosaic.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_centre_prior_peaks_in_the_middle_and_is_symmetric():
    c = centre_prior(8)[0]
    assert c.shape == (8, 8)
    assert torch.allclose(c, c.flip(0)) and torch.allclose(c, c.T)
    assert c[3:5, 3:5].min() > c[0, 0] and c.max() <= 1


def test_randomised_replaces_the_head_then_everything(tiny_run):
    from slotlib.classify.explain import open_run

    exp = open_run(tiny_run[0])
    trained = exp.model.state_dict()
    head = randomised(exp.model, exp.config, "head", 0).state_dict()
    full = randomised(exp.model, exp.config, "all", 0).state_dict()
    changed = {k for k, v in head.items() if v.is_floating_point() and not torch.equal(v, trained[k])}
    assert changed and all(not k.startswith("backbone.") for k in changed)
    assert any(k.startswith("backbone.") and v.is_floating_point() and not torch.equal(v, trained[k])
               for k, v in full.items())
    assert torch.equal(exp.model.state_dict()["head.initial_slots"], trained["head.initial_slots"])  # not in place


def test_the_benchmark_writes_every_method_and_metric(tiny_run, isolated_cache, tmp_path):
    import shutil

    from slotlib.cli import main

    cell = tmp_path / "cell"
    shutil.copytree(tiny_run[0], cell)
    assert main(["explain", str(cell), "--tiles", "6", "--mosaics", "3", "--captum-tiles", "3"]) == 0
    results = json.loads((cell / "explanations.json").read_text())
    assert set(results["methods"]) == set(METHODS)
    for method in ("head", "gradcam"):
        assert set(results["methods"][method]) == set(METRICS)
    for floor in ("random", "centre"):
        assert "random_head_rho" not in results["methods"][floor]
    centre = results["methods"]["centre"]
    assert centre["sensitivity"]["mean"] == 0.0           # a constant map does not move
    assert centre["mosaic"]["mean"] == pytest.approx(0.25)  # symmetric: the same mass in every quadrant
    assert results["methods"]["head"]["mosaic"]["n"] == 12  # 3 mosaics x 4 classes
    assert results["methods"]["head"]["infidelity"]["n"] == 3
    with np.load(cell / "explanations.npz") as figures:
        assert figures["head_maps"].shape == figures["gradcam_maps"].shape
        assert figures["mosaic_head_maps"].shape[1] == 4
        assert figures["items_evidence_mosaic"].shape == (12,) and figures["items_head_infidelity"].shape == (3,)
        test = paired(dict(figures), "mosaic", "evidence", "random")
        assert test["n"] == 12 and 0 <= test["p"] <= 1
    table = results_table([results, results], over="cells")
    assert table.count("\n") == 1 + len(METHODS) and "± 0.000" in table


def test_explain_names_a_path_that_is_not_a_cell(tmp_path, capsys):
    from slotlib.cli import main

    assert main(["explain", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "finished cell" in err and err.count("\n") == 1


def test_explanations_notebook_benchmarks_a_cell_and_the_attention_notebook_shows_it(tiny_run, isolated_cache,
                                                                                     tmp_path):
    import shutil

    import nbformat

    from slotlib.runs import explanations
    from slotlib.runs.grid import NOTEBOOKS, execute_notebook

    cell = tmp_path / "grid" / "cell"
    shutil.copytree(tiny_run[0], cell)
    execute_notebook(NOTEBOOKS / "explanations.ipynb", tmp_path / "explanations.ipynb",
                     {"dirs": [str(cell.parent)], "tiles": 6, "mosaics": 2, "captum_tiles": 2})
    results = explanations.read_results(cell)
    assert results["tiles"] == 6 and results["mosaics"] == 2
    table = explanations.summary({"cell": results})
    assert list(table["method"]) == list(METHODS) and (table["cells"] == 1).all()
    executed = nbformat.read(tmp_path / "explanations.ipynb", as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert images == 2
    execute_notebook(NOTEBOOKS / "attention.ipynb", tmp_path / "attention.ipynb",
                     {"run_dir": str(cell), "n_tiles": 2, "max_tiles": 10, "device": "cpu"})
    shown = nbformat.read(tmp_path / "attention.ipynb", as_version=4)
    out = [o for c in shown.cells if c.cell_type == "code" and "plot_head_vs_gradcam" in c.source for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in out) == 2
    assert "gradcam" in str(out) and "No explanation benchmark" not in str(out)


def test_a_near_empty_map_is_called_so_and_drawn_on_its_own_scale():
    from slotlib.runs.report_figures import NEAR_EMPTY, map_scale

    faint = map_scale(np.full((2, 3, 3), 0.036), bounded=True)
    assert faint.near_empty and faint.vmax == pytest.approx(0.036)
    assert "0.036" in faint.label() and "near-empty" in faint.caption()
    strong = map_scale(np.array([0.0, 0.7]), bounded=True)
    assert not strong.near_empty and strong.vmax == pytest.approx(0.7)
    assert not map_scale(np.array([0.0, NEAR_EMPTY / 2]), bounded=False).near_empty   # CAM: unbounded units


def test_the_summary_groups_cells_by_their_name_less_the_seed():
    # two variants of one head (the slot head's two scores) stay apart; seeds of one variant pool
    from slotlib.runs.explanations import summary
    from slotlib.runs.folder import config_of

    assert config_of("slot_slot_scoreattention_it1_seed2-8114d277") == "slot_slot_scoreattention_it1"
    assert config_of("scouter_seed0") == "scouter" and config_of("my_cell") == "my_cell"

    def result(head, mosaic):
        return {"head": head, "tiles": 10, "mosaics": 5, "head_map_max": 0.5,
                "methods": {"head": {"mosaic": {"mean": mosaic, "sd": 0.0, "n": 20}}}}

    table = summary({"slot_seed0-aaaaaaaa": result("slot", 0.2), "slot_seed1-bbbbbbbb": result("slot", 0.4),
                     "slot_slot_scoreattention_it1_seed0-cccccccc": result("slot", 0.9)})
    assert list(table["cells of"]) == ["slot", "slot_slot_scoreattention_it1"]
    assert list(table["cells"]) == [2, 1] and table["mosaic"].iloc[0] == "0.300 ± 0.141"


def test_paired_by_hand():
    figures = {"items_a_mosaic": np.array([0.9, 0.8, 0.7, np.nan, 0.6]), "items_b_mosaic": np.array([0.5] * 5)}
    test = paired(figures, "mosaic", "a", "b")
    assert test["n"] == 4 and test["mean_diff"] == pytest.approx(0.25)
    assert test["p"] == pytest.approx(0.125)   # exact signed-rank test: all 4 of 4 differences positive, 2 / 2**4
