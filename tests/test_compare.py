"""McNemar's test between two cells (slotlib.runs.compare), against counts worked by hand, and the
predictions a finished run writes."""

import numpy as np
import pytest

from slotlib.cli import main
from slotlib.runs.compare import PREDICTIONS_FILE, mcnemar


def cell(tmp_path, name, right, indices=None):
    folder = tmp_path / name
    folder.mkdir()
    target = np.zeros(len(right), int)
    predicted = np.where(right, 0, 1)
    indices = np.arange(len(right)) if indices is None else indices
    np.savez(folder / PREDICTIONS_FILE, indices=indices, target=target, predicted=predicted)
    return folder


def preds(right):
    right = np.asarray(right, bool)
    return {"indices": np.arange(len(right)), "target": np.zeros(len(right), int),
            "predicted": np.where(right, 0, 1)}


def test_small_counts_use_the_exact_binomial_test():
    # A right and B wrong on 5 tiles, the reverse on 1, both right on 4: p = 2 * P(X >= 5), X ~ Bin(6, 1/2)
    a = preds([1] * 5 + [0] + [1] * 4)
    b = preds([0] * 5 + [1] + [1] * 4)
    r = mcnemar(a, b)
    assert (r["a_only"], r["b_only"], r["tiles"]) == (5, 1, 10) and r["test"] == "exact binomial"
    assert r["p"] == pytest.approx(2 * (6 + 1) / 64)
    assert mcnemar(a, a)["p"] == 1.0


def test_large_counts_use_the_corrected_chi_square():
    from scipy.stats import chi2

    a = preds([1] * 40 + [0] * 20 + [1] * 100)
    b = preds([0] * 40 + [1] * 20 + [1] * 100)
    r = mcnemar(a, b)
    assert r["test"].startswith("chi-square")
    assert r["p"] == pytest.approx(chi2.sf((40 - 20 - 1) ** 2 / 60, 1))   # (|b - c| - 1)^2 / (b + c) = 6.02


def test_compare_names_cells_on_other_tiles_and_cells_without_predictions(tmp_path, capsys):
    a = cell(tmp_path, "a", [1, 1, 0])
    b = cell(tmp_path, "b", [1, 0, 0], indices=np.array([0, 1, 5]))
    assert main(["compare", str(a), str(b)]) == 2
    assert "different tiles" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    assert main(["compare", str(a), str(tmp_path / "c")]) == 2
    assert f"holds no {PREDICTIONS_FILE}" in capsys.readouterr().err
    assert main(["compare", str(a), str(cell(tmp_path, "d", [0, 0, 0]))]) == 0
    assert "A right where B is wrong: 2; B right where A is wrong: 0" in capsys.readouterr().out


def test_a_finished_run_writes_its_test_predictions(tiny_run):
    import json

    out, metrics = tiny_run
    with np.load(out / PREDICTIONS_FILE) as p:
        assert len(p["indices"]) == len(p["target"]) == len(p["predicted"])
        assert (p["predicted"] == p["target"]).mean() == pytest.approx(metrics["test_acc"])
    assert json.loads((out / "metrics.json").read_text())["status"] == "done"


def test_paired_rows_compare_the_best_setting_seed_by_seed(tmp_path):
    import pandas as pd

    from slotlib.runs.compare import paired_rows

    cell(tmp_path, "scouter_seed0-aa", [1] * 9 + [0])
    cell(tmp_path, "scouter_seed1-bb", [1] * 10)
    cell(tmp_path, "linear_seed0-cc", [0] * 5 + [1] * 5)
    (tmp_path / "linear_seed1-dd").mkdir()   # finished, but without predictions: said, not skipped
    table = pd.DataFrame({"cell": ["scouter_seed0-aa", "scouter_seed1-bb", "linear_seed0-cc", "linear_seed1-dd"],
                          "status": "done", "best_val_acc": [0.90, 0.92, 0.95, 0.80], "seed": [0, 1, 0, 1]})
    pairs = paired_rows(tmp_path, table)
    # the best setting is chosen on mean validation accuracy (scouter 0.91 > linear 0.875), never on test
    assert list(pairs["best"]) == ["scouter", "scouter"] and list(pairs["seed"]) == [0, 1]
    first = pairs.iloc[0]
    assert (first["best right only"], first["it right only"]) == (5, 1) and first["test"] == "exact binomial"
    assert first["p"] == pytest.approx(2 * (6 + 1) / 64)
    assert pairs.iloc[1]["test"].startswith("not compared") and "predictions.npz" in pairs.iloc[1]["test"]
    assert paired_rows(tmp_path, table, best="linear").iloc[0]["best"] == "linear"
    assert paired_rows(tmp_path, table[table["cell"].str.startswith("scouter")]).empty   # one setting only


def test_budgets_differ_by_axis_or_by_training_time():
    import pandas as pd

    from slotlib.runs.compare import budgets_differ, train_minutes

    table = pd.DataFrame({"cell": ["a_seed0-1", "b_seed0-2"], "status": "done", "wall_seconds": [600.0, 700.0],
                          "train_wall_seconds": [540.0, None]})
    assert list(train_minutes(table)) == [9.0, 700.0 / 60]   # the whole run where training time was not kept
    assert not budgets_differ(table, ["head", "seed"])
    assert budgets_differ(table, ["stage2_epochs", "seed"])
    assert budgets_differ(table.assign(train_wall_seconds=[540.0, 1200.0]), ["head"])
