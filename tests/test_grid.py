"""Grids through papermill: dry run, end to end, skip done, failed cells, SIGKILL of the runner."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from slotlib.cli import main
from slotlib.runs.grid import device_slots, run_grid
from slotlib.runs.status import format_status, status_rows


def grid_file(tmp_path, root, grid, **base) -> Path:
    params = {"base": {"data_root": str(root), "image_size": 64, "batch_size": 16, "pretrained": False,
                       "hidden_dim": 32, "slot_iters": 2, "stage1_epochs": 1, "stage2_epochs": 1,
                       "per_class_limit": 6, "device": "cpu", **base},
              "grid": grid}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def cell_processes(out) -> set[int]:
    """PIDs of papermill children of this grid and of every ipykernel (started by anyone)."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in ps.splitlines()
            if "ipykernel_launcher" in line or str(out) in line}


def test_device_slots():
    assert device_slots(None, 3) == [None, None, None]
    assert device_slots(["0", "1"], 2) == ["0", "1"]
    assert device_slots(["0"], 3) == ["0", "0", "0"]
    assert device_slots(["0", "1"], 4) == ["0", "0", "1", "1"]


def test_dry_run_lists_cells_and_counts(tmp_path, tiny_root, capsys):
    path = grid_file(tmp_path, tiny_root, {"head": ["scouter", "linear"]})
    assert main(["grid", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("pending" in l and "n_params=" in l for l in lines)
    assert not (tmp_path / "out").exists()


def test_dry_run_streams_each_line_once_its_model_is_checked(tmp_path, tiny_root, monkeypatch):
    # a large grid's listing starts at once: each distinct model is built (checked) just before its first
    # line, not all of them before the first line
    import slotlib.classify.model as model
    from slotlib.runs.grid import run_grid

    events = []
    real = model.check_builds
    monkeypatch.setattr(model, "check_builds", lambda *a, **k: (events.append("build"), real(*a, **k))[1])
    path = grid_file(tmp_path, tiny_root, {"head": ["scouter", "linear"], "stage1_lr": [1e-3, 2e-3]})
    run_grid(path, tmp_path / "out", dry_run=True, echo=lambda line: events.append("line"))
    assert events[:2] == ["build", "line"] and events.count("build") == 2 and events.count("line") == 4


def test_bad_grid_exits_2(tmp_path, tiny_root, capsys):
    path = grid_file(tmp_path, tiny_root, {"head": []})
    assert main(["grid", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "'head'" in capsys.readouterr().err


def test_two_cell_grid_end_to_end_then_rerun_skips(tmp_path, tiny_root, isolated_cache):
    path = grid_file(tmp_path, tiny_root, {"head": ["scouter", "linear"]})
    out = tmp_path / "out"
    messages = []
    final = run_grid(path, out, jobs=2, echo=messages.append)
    assert list(final.values()) == ["done", "done"], messages
    for cell_id in final:
        folder = out / cell_id
        assert {"params.yaml", "history.csv", "metrics.json", "best.pt", "last.pt", "train.ipynb", "log.txt"} <= {
            p.name for p in folder.iterdir()}
    stamps = {c: (out / c / "metrics.json").stat().st_mtime_ns for c in final}
    messages.clear()
    assert run_grid(path, out, jobs=2, echo=messages.append) == final
    assert all(m.startswith("skip") for m in messages)
    assert stamps == {c: (out / c / "metrics.json").stat().st_mtime_ns for c in final}
    table = format_status(status_rows(out))
    assert table.count("done") == 2 and "2/2" in table


def test_failed_cell_is_recorded_and_the_grid_carries_on(tmp_path, tiny_root, isolated_cache, monkeypatch):
    # The grid reads each cell's data before any starts and would refuse the bad root up front
    # (tests/test_bad_input.py); here the cell itself must fail, to test how the runner records it.
    monkeypatch.setattr("slotlib.runs.grid_plan.check_data_of", lambda cells: None)
    good = str(tiny_root)
    path = grid_file(tmp_path, tiny_root, {"data_root": [good, str(tmp_path / "nowhere")]})
    out = tmp_path / "out"
    final = run_grid(path, out, jobs=1, echo=lambda m: None)
    assert sorted(final.values()) == ["done", "failed"]
    failed = next(c for c, s in final.items() if s == "failed")
    metrics = json.loads((out / failed / "metrics.json").read_text())
    assert "EuroSAT" in metrics["error"] or "not found" in metrics["error"]
    # without --retry-failed the failed cell is left alone; with it, only that cell runs again
    messages = []
    run_grid(path, out, echo=messages.append)
    assert not any(m.startswith("start") for m in messages)
    messages.clear()
    run_grid(path, out, retry_failed=True, echo=messages.append)
    assert [m.split()[1] for m in messages if m.startswith("start")] == [failed]


def test_sigkill_of_the_runner_then_rerun_recomputes_no_finished_cell(tmp_path, tiny_root, isolated_cache):
    path = grid_file(tmp_path, tiny_root, {"slot_iters": [1, 2, 3]}, stage2_epochs=3)
    out = tmp_path / "out"
    env = {**os.environ, "SLOTLIB_CACHE": str(isolated_cache)}
    cmd = [sys.executable, "-m", "slotlib.cli", "grid", str(path), "--out", str(out), "--jobs", "1"]
    kernels_before = cell_processes(out)
    runner = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 400

    def statuses():
        return [json.loads(m.read_text())["status"] for m in sorted(out.glob("*/metrics.json"))] if out.exists() else []

    while time.time() < deadline and runner.poll() is None:
        s = statuses()
        if s.count("done") >= 1 and "running" in s:
            break
        time.sleep(0.2)
    assert runner.poll() is None, runner.stdout.read().decode()[-2000:]
    runner.send_signal(signal.SIGKILL)  # the runner alone: its children must not outlive it
    runner.wait()
    done_before = {m.parent.name: m.stat().st_mtime_ns for m in out.glob("*/metrics.json")
                   if json.loads(m.read_text())["status"] == "done"}
    assert len(done_before) >= 1
    time.sleep(3)  # the orphaned kernel's parent poller notices within a second
    assert cell_processes(out) - kernels_before == set(), "a cell process or kernel outlived the killed runner"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert statuses() == ["done", "done", "done"]
    for cell_id, stamp in done_before.items():
        assert (out / cell_id / "metrics.json").stat().st_mtime_ns == stamp, f"{cell_id} was recomputed"
        assert f"skip  {cell_id}" in rerun.stdout


def test_missing_weights_are_one_sentence_before_any_cell_starts(tmp_path, tiny_root, capsys, monkeypatch):
    """pretrained: true without reachable weights: the runner says so once and starts nothing (before,
    every cell failed on its own, each after the hub's retries)."""
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("SLOTLIB_WEIGHTS", str(empty))
    params = grid_file(tmp_path, tiny_root, {"head": ["scouter", "slot"]}, backbone="mobilenetv2_100", pretrained=True)
    assert main(["grid", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("holds no weights for 'mobilenetv2_100'") == 1 and "pretrained: false" in err
    assert not (tmp_path / "out").exists()


def test_a_cell_gets_absolute_data_and_weights_paths(tmp_path, monkeypatch):
    """The kernel runs in notebooks/: EUROSAT_ROOT=../shared/data, relative to where `slotlib grid` ran,
    would name another folder there and fail every cell."""
    from slotlib.config import load_params_file
    from slotlib.runs.grid import absolute_path_env, cell_parameters

    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.yaml").write_text("base: {data_root: data, pretrained: false}\n")
    cell = load_params_file(tmp_path / "g.yaml").cells()[0]
    assert cell_parameters(cell)["data_root"] == str(tmp_path / "data")
    env = absolute_path_env({"EUROSAT_ROOT": "../shared/data", "SLOTLIB_WEIGHTS": "w", "OTHER": "x", "PATH": "a:b"})
    assert env == {"EUROSAT_ROOT": str(tmp_path.parent / "shared" / "data"), "SLOTLIB_WEIGHTS": str(tmp_path / "w"),
                   "OTHER": "x", "PATH": "a:b"}
    assert cell.id == load_params_file(tmp_path / "g.yaml").cells()[0].id   # data_root is not in the id
