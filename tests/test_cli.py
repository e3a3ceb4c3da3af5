"""The command line: `slotlib describe` and the exit-code-2 contract."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slotlib.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_describe_reference_best(capsys):
    assert main(["describe", str(ROOT / "params/reference_best.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_params"] == 2_647_153  # SCOUTER tokens skip the GroupNorm (token_norm auto: rms)
    assert out["n_trainable_stage1"] == out["n_params_head"] == 166_144
    assert out["n_trainable_stage2"] == out["n_params"]
    assert out["params"]["lambda_area"] == 0.05 and len(out["cells"]) == 1


def test_describe_grid_lists_cells_with_counts(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("base: {pretrained: false}\ngrid: {hidden_dim: [64, 128], head: [scouter, linear]}\n")
    assert main(["describe", str(path), "--set", "slot_iters=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["cells"]) == 4 and out["params"]["slot_iters"] == 3
    assert len(set(out["n_params_by_cell"].values())) == 4


def test_bad_input_exits_2_with_one_sentence(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("grid: {slot_iters: [5, 0]}\n")
    proc = subprocess.run([sys.executable, "-m", "slotlib.cli", "describe", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'slot_iters'" in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["describe", "missing.yaml"], "missing.yaml"),
    (["describe", "params/reference_best.yaml", "--set", "nope=1"], "'nope'"),
])
def test_bad_input_in_process(args, needle, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(args) == 2
    assert needle in capsys.readouterr().err


def test_train_with_an_unknown_cell_exits_2(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("base: {pretrained: false}\ngrid: {head: [scouter, linear]}\n")
    assert main(["train", str(path), "--out", str(tmp_path / "o"), "--cell", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is not a cell of" in err and "scouter-" in err
    assert main(["train", str(path), "--out", str(tmp_path / "o")]) == 2  # a grid needs --cell
    assert "pick one with --cell" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
