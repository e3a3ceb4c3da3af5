"""Bad input and damaged files (issue 17): exit 2, one sentence naming the key, file or value at fault and
what would be valid, before anything runs, and nothing already written is lost.

PROBES is a table: a new bad input is one line (a setup that returns the command line, and a fragment of
the sentence it must print). Setups get a Probe with a tmp folder, a tiny learnable EuroSAT and helpers.
"""

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import CLASSES, write_learnable_eurosat

from slotlib.cli import main

TINY = {"image_size": 32, "batch_size": 8, "pretrained": False, "hidden_dim": 16, "slot_iters": 1,
        "stage1_epochs": 1, "stage2_epochs": 0, "per_class_limit": 4, "device": "cpu", "backbone": "resnet10t"}


@dataclass
class Probe:
    tmp: Path
    data: Path

    def params(self, name="p.yaml", **base) -> str:
        path = self.tmp / name
        path.write_text(yaml.safe_dump({"base": {"data_root": str(self.data), **TINY, **base}}))
        return str(path)

    def text(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def train(self, *extra, out="run", **base) -> list[str]:
        return ["train", self.params(**base), "--out", str(self.tmp / out), "--no-progress", *extra]

    def finished_cell(self, out="run") -> Path:
        """A cell folder as a finished run leaves it (what the probes damage)."""
        cell = self.tmp / out
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "metrics.json").write_text(json.dumps({"status": "done", "test_acc": 0.9, "best_val_acc": 0.9}))
        (cell / "params.yaml").write_text(yaml.safe_dump({"data_root": str(self.data), **TINY}))
        return cell

    def other_data(self, drop: str | None = None, per_class: int = 4) -> Path:
        root = self.tmp / f"data_{drop or per_class}"
        write_learnable_eurosat(root / "eurosat" / "2750", per_class=per_class, seed=1)
        if drop:
            shutil.rmtree(root / "eurosat" / "2750" / drop)
        return root

    def tile(self, cls: str, n: int) -> Path:
        return self.data / "eurosat" / "2750" / cls / f"{cls}_{n}.jpg"


class Evil:
    """Not tensors: torch.load(weights_only=True) must refuse to unpickle it."""

    def __reduce__(self):
        return (print, ("this would have run",))


def _garbage_metrics(p):
    (p.finished_cell() / "metrics.json").write_text("{not json")
    return p.train()


def _list_metrics(p):
    (p.finished_cell() / "metrics.json").write_text("[1, 2]")
    return p.train()


def _truncated_last(p):
    cell = p.tmp / "run"
    cell.mkdir()
    (cell / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    return p.train()


def _evil_last(p):
    cell = p.tmp / "run"
    cell.mkdir()
    with open(cell / "last.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    return p.train()


def _bad_tile(p, content: bytes | None = None, size: int | None = None):
    p.data = p.other_data(per_class=4)
    bad = p.tile("Pasture", 2)
    if size:
        from PIL import Image
        Image.new("RGB", (size, size)).save(bad, format="JPEG")
    else:
        bad.write_bytes(content)
    return p.train()


def _other_grid(p):
    out = p.tmp / "grid"
    out.mkdir()
    (out / "grid.yaml").write_text(yaml.safe_dump({"base": {"head": "slot"}, "grid": {"lambda_area": [0.1]}}))
    return ["grid", p.params(), "--out", str(out), "--dry-run"]


# name: (setup(probe) -> argv, fragment of the one sentence on stderr)
PROBES = {
    "finished run lost best.pt": (lambda p: (p.finished_cell(), p.train())[1], "whose best.pt is missing"),
    "garbage metrics.json": (_garbage_metrics, "metrics.json is damaged (not JSON"),
    "metrics.json not an object": (_list_metrics, "metrics.json is damaged (not a JSON object"),
    "truncated last.pt": (_truncated_last, "last.pt is damaged"),
    "last.pt that is not tensors": (_evil_last, "will not load it"),
    "unknown backbone": (lambda p: p.train(backbone="resnet_does_not_exist"), "must be a timm model name"),
    "unknown pretrained tag": (lambda p: p.train(backbone="resnet18.not_a_tag"), "which timm cannot build"),
    "unknown backbone, grid": (lambda p: ["grid", p.params(backbone="nope_net"), "--out", str(p.tmp / "g")],
                               "must be a timm model name"),
    "fixed-size backbone at 32 px": (lambda p: p.train(backbone="vit_tiny_patch16_224"), "does not take 32 px"),
    "eval_size a fixed-size backbone cannot take": (
        lambda p: p.train(backbone="vit_tiny_patch16_224", image_size=224, eval_size=64),
        "parameter 'eval_size' is 64, but timm 'vit_tiny_patch16_224' built for 224 px does not take 64 px"),
    "truncated JPEG": (lambda p: _bad_tile(p, content=p.tile("Forest", 1).read_bytes()[:200]), "Pasture_2.jpg"),
    "text file named .jpg": (lambda p: _bad_tile(p, content=b"hello, I am text"), "could not be decoded"),
    "80x80 JPEG": (lambda p: _bad_tile(p, size=80), "is a 80x80 RGB image"),
    "a class folder missing": (lambda p: (setattr(p, "data", p.other_data(drop="River")), p.train())[1],
                               "missing: River"),
    "empty params file": (lambda p: ["describe", p.text("e.yaml", "")], "is empty; write at least 'base: {}'"),
    "--set bad value blames --set": (lambda p: ["describe", p.params(), "--set", "dropout=abc"], "(in --set)"),
    "--set of a grid axis": (lambda p: ["describe", p.text("g.yaml", "grid: {head: [slot, linear]}\n"),
                                        "--set", "head=scouter"], "is a grid axis"),
    "duplicate key in a params file": (lambda p: ["describe", p.text("d.yaml", "base:\n  stage1_epochs: 1\n"
                                                                      "  stage1_epochs: 3\n")],
                                       "gives the key 'stage1_epochs' twice, on lines 2 and 3"),
    "duplicate base block": (lambda p: ["describe", p.text("d.yaml", "base:\n  image_size: 64\nbase:\n  head: slot\n")],
                             "gives the key 'base' twice, on lines 1 and 3"),
    "infinite learning rate in a file": (lambda p: ["describe", p.text("i.yaml", "base: {stage1_lr: .inf}\n")],
                                         "'stage1_lr' must be a finite number"),
    "1e999 in a file": (lambda p: ["describe", p.text("i.yaml", "base: {stage2_lr: 1e999}\n")],
                        "'stage2_lr' must be a finite number"),
    "NaN on --set": (lambda p: ["describe", p.params(), "--set", "dropout=.nan"], "'dropout' must be a finite number"),
    "params path is a folder": (lambda p: ["describe", str(p.tmp)], "is a folder; pass the path of a YAML file"),
    "params file not UTF-8": (lambda p: ["describe", (p.tmp / "b.yaml").write_bytes(b"base:\n  head: \xff\xfe\n")
                                         and str(p.tmp / "b.yaml")], "is not UTF-8 text"),
    "--out is a file": (lambda p: ["grid", p.params(), "--out", p.text("f.txt", "x"), "--dry-run"],
                        "is a file; name a folder"),
    "--out inside a file": (lambda p: p.train(out="f.txt/run") if p.text("f.txt", "x") else None,
                            "which is a file; name a folder elsewhere"),
    "--out empty, train": (lambda p: p.train()[:3] + ["", "--no-progress"], "--out is empty"),
    "--out empty, grid": (lambda p: ["grid", p.params(), "--out", "", "--dry-run"], "--out is empty"),
    "a grid of a million cells": (lambda p: ["grid", p.text("big.yaml", yaml.safe_dump({"grid": {
        k: [0.1 * i for i in range(10)] for k in ("dropout", "lambda_area", "weight_decay", "label_smoothing",
                                                 "stage1_lr", "stage2_lr")}})), "--out", str(p.tmp / "g"), "--dry-run"],
                                  "has 1,000,000 cells (10 x 10 x 10 x 10 x 10 x 10), more than the limit"),
    "a class folder missing, grid": (lambda p: (setattr(p, "data", p.other_data(drop="River")),
                                                ["grid", p.params(), "--out", str(p.tmp / "g")])[1], "missing: River"),
    "a Ray address nobody answers": (lambda p: ["grid", p.params(), "--out", str(p.tmp / "g"), "--backend", "ray",
                                                "--address", "127.0.0.1:1"], "nothing answers at 127.0.0.1:1"),
    "a Ray client address nobody answers": (lambda p: ["grid", p.params(), "--out", str(p.tmp / "g"), "--backend",
                                                       "ray", "--address", "ray://127.0.0.1:1"],
                                            "nothing answers at 127.0.0.1:1"),
    "report of an empty folder": (lambda p: (os.mkdir(p.tmp / "empty"), ["report", str(p.tmp / "empty")])[1],
                                  "holds no cell folders"),
    "grid folder of another params file": (_other_grid, "made from another params file"),
}


@pytest.fixture
def probe(tmp_path, tiny_root, isolated_cache):
    return Probe(tmp_path, tiny_root)


@pytest.mark.parametrize("name", list(PROBES))
def test_bad_input_is_one_sentence_and_exit_2(name, probe, capsys):
    setup, fragment = PROBES[name]
    argv = setup(probe)
    before = {p: p.read_bytes() for p in probe.tmp.rglob("*") if p.is_file() and "data_" not in str(p)}
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{name}: exit {code}, stderr {err!r}"
    assert fragment in err, f"{name}: {err!r}"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "weights_only=False" not in err   # torch's advice must never reach a user
    after = {p: p.read_bytes() for p in before if p.exists()}
    assert after == before, f"{name}: a file already written was changed or lost"


def test_every_probe_sentence_names_something(probe, capsys):
    """Guard against fragments that any message would match."""
    assert all(len(fragment) >= 10 for _, fragment in PROBES.values())


def test_exponents_without_a_dot_are_numbers(probe, capsys):
    """YAML 1.1 reads 1e-4 and 1.0e3 as text; in a file and in --set they are numbers."""
    path = probe.text("e.yaml", "base: {stage1_lr: 1e-4, stage2_lr: 1.0e-5, weight_decay: 1.0e3}\n")
    assert main(["describe", path, "--set", "dropout=1e-1"]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    assert (params["stage1_lr"], params["stage2_lr"], params["weight_decay"], params["dropout"]) == (1e-4, 1e-5,
                                                                                                      1e3, 0.1)


def test_a_damaged_cell_does_not_take_status_or_the_report_down(probe, capsys):
    from slotlib.runs import report, report_figures

    grid = probe.tmp / "grid"
    good = probe.finished_cell("grid/good")
    (good / "history.csv").write_text("stage,epoch,val_acc\n1,1,0.5\n")
    (probe.finished_cell("grid/bad") / "metrics.json").write_text("garbage")
    (probe.finished_cell("grid/nohist")).joinpath("metrics.json").write_text(
        json.dumps({"status": "done", "best_val_acc": 0.95, "test_acc": 0.9}))
    assert main(["status", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and str(grid / "bad" / "metrics.json") in out and "good" in out
    table = report.collect(grid)
    assert set(table["status"]) == {"done", "damaged"}
    assert "bad" in set(report.failed(table)["cell"])
    report_figures.plot_top_curves(grid, report.ranked(table)['cell'].head(3).tolist())   # nohist has no history.csv: left out, said in the legend


def test_a_grid_folder_takes_more_cells_only_when_asked(probe, capsys):
    out = probe.tmp / "grid"
    out.mkdir()
    (out / "grid.yaml").write_text(yaml.safe_dump({"base": {"head": "slot"}}))
    other = probe.params("q.yaml", head="linear")
    assert main(["grid", other, "--out", str(out), "--dry-run"]) == 2
    assert main(["grid", other, "--out", str(out), "--dry-run", "--add-cells"]) == 0


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    from slotlib.data import eurosat

    def offline(root):
        (Path(root) / "eurosat").mkdir(parents=True)
        raise OSError("no network")

    monkeypatch.setattr(eurosat, "download_eurosat", offline)
    with pytest.raises(FileNotFoundError, match="the download failed"):
        eurosat.locate_or_download(tmp_path)
    assert not (tmp_path / "eurosat").exists()


def test_resume_refuses_other_tiles(probe, capsys):
    """A run stopped after stage 1 and resumed on other tiles under the same names must not finish silently."""
    params = dict(stage2_epochs=1)
    assert main(probe.train(**params)) == 0
    cell = probe.tmp / "run"
    metrics = json.loads((cell / "metrics.json").read_text())
    (cell / "metrics.json").write_text(json.dumps({**metrics, "status": "running"}))   # as if killed before test
    shutil.copytree(probe.data, probe.tmp / "moved")
    for cls in CLASSES[:2]:  # other pixels, same file names
        for tile in (probe.tmp / "moved" / "eurosat" / "2750" / cls).iterdir():
            tile.write_bytes((probe.tmp / "moved" / "eurosat" / "2750" / "River" / "River_1.jpg").read_bytes())
    probe.data = probe.tmp / "moved"
    capsys.readouterr()
    assert main(probe.train(**params)) == 2
    assert "was started on other tiles" in capsys.readouterr().err


def test_a_full_disk_is_one_sentence_and_the_run_resumes(probe, capsys, monkeypatch):
    """Training that meets a full disk stops with one sentence and exit 2; the same command then resumes."""
    import errno as errno_

    from slotlib.classify import fit

    real = fit.save_torch_atomic
    calls = {"n": 0}

    def full(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:          # best.pt of stage 1 is written, then the disk is full
            raise OSError(errno_.ENOSPC, "No space left on device", str(path))
        return real(obj, path)

    monkeypatch.setattr(fit, "save_torch_atomic", full)
    argv = probe.train()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "free some space" in err and len(err.splitlines()) == 1
    assert not list((probe.tmp / "run").glob("*.tmp*"))
    monkeypatch.setattr(fit, "save_torch_atomic", real)
    assert main(argv) == 0


@pytest.mark.parametrize("damage, fragment", [
    (lambda cell: (cell / "metrics.json").write_text(json.dumps(
        {**json.loads((cell / "metrics.json").read_text()), "test_acc": 2.0})), "'test_acc' is 2.0"),
    (lambda cell: (cell / "metrics.json").write_text(json.dumps(
        {**json.loads((cell / "metrics.json").read_text()), "best_val_acc": -3.0})), "'best_val_acc' is -3.0"),
    (lambda cell: (cell / "params.yaml").write_text(
        (cell / "params.yaml").read_text().replace("stage2_epochs: 0", "stage2_epochs: 7")), "edited after the run"),
    (lambda cell: [(cell / f).unlink() for f in ("metrics.json",)] and (cell / "params.yaml").write_text(""),
     "params.yaml is damaged (empty)"),
])
def test_a_finished_cell_is_checked_on_read(damage, fragment, probe, capsys):
    """A hand-edited params.yaml, an accuracy outside [0, 1], or a lone empty params.yaml: the cell is
    damaged with one sentence in status and the report, never ranked, and its files are left as they are."""
    from slotlib.runs import report

    grid = probe.tmp / "grid"
    cell = probe.finished_cell("grid/cell")
    params = yaml.safe_load((cell / "params.yaml").read_text())
    (cell / "metrics.json").write_text(json.dumps({"status": "done", "cell_id": "cell", "params": params,
                                                    "best_val_acc": 0.9, "test_acc": 0.9}))
    probe.finished_cell("grid/good").joinpath("metrics.json").write_text(json.dumps(
        {"status": "done", "params": params, "best_val_acc": 0.5, "test_acc": 0.5}))
    damage(cell)
    before = {p.name: p.read_bytes() for p in cell.iterdir()}
    assert main(["status", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and fragment in out
    table = report.collect(grid)
    assert list(report.ranked(table)["cell"]) == ["good"]
    assert table.set_index("cell").loc["cell", "status"] == "damaged"
    assert {p.name: p.read_bytes() for p in cell.iterdir()} == before


def test_a_second_grid_on_the_same_folder_is_refused_before_it_writes(probe, capsys):
    """Two `slotlib grid` on one --out: the second is refused with one sentence, and never writes a status
    into the first one's live cell."""
    import fcntl

    out = probe.tmp / "grid"
    out.mkdir()
    with open(out / ".grid.lock", "w") as held:          # the first grid, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = sorted(p.name for p in out.iterdir())
        assert main(["grid", probe.params(), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "another slotlib grid is running on" in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == before
        assert main(["grid", probe.params(), "--out", str(out), "--dry-run"]) == 0   # reading is fine


def test_an_eleventh_class_folder_is_named_in_the_log(probe, capsys):
    data = probe.other_data(per_class=2)
    (data / "eurosat" / "2750" / "Glacier").mkdir()
    from slotlib.data.eurosat import load_eurosat

    ds = load_eurosat(data)
    assert len(ds.classes) == 10
    err = capsys.readouterr().err
    assert "Glacier" in err and "not read" in err


@pytest.fixture
def read_only_folder(tmp_path):
    """A real read-only filesystem (a tmpfs mounted ro); the probe is skipped, with the reason, where this
    process may not mount one."""
    import subprocess

    where = tmp_path / "ro"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({made.stderr.decode().strip() or 'mount failed'})")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


@pytest.mark.parametrize("command", ["train", "grid"])
def test_out_on_a_read_only_filesystem_is_one_sentence(command, probe, read_only_folder, capsys):
    out = str(read_only_folder / "run")
    argv = probe.train(out=out) if command == "train" else ["grid", probe.params(), "--out", out]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be written" in err and "read-only" in err and len(err.splitlines()) == 1, err
