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
