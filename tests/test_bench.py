"""`slotlib bench`: both pipelines run the training step and report comparable figures (tiny data, CPU)."""

import json

import pytest
import torch

from slotlib.classify import bench as benchmark
from slotlib.classify.bench_format import format_bench
from slotlib.classify.bench_reference import JpegTiles, reference_transform
from slotlib.cli import main
from slotlib.config import Config


def tiny(root, **overrides):
    return Config.from_params({"data_root": str(root), "image_size": 32, "batch_size": 8, "pretrained": False,
                               "hidden_dim": 32, "slot_iters": 2, "device": "cpu", **overrides})


def test_bench_times_every_pipeline(tiny_root, isolated_cache):
    result = benchmark.bench(tiny(tiny_root), pipelines=("reference", "loader", "fast"), steps=2, warmup=1,
                             repeats=2, workers=0)
    assert [r["pipeline"] for r in result["results"]] == ["reference", "loader", "fast"]
    for r in result["results"]:
        assert r["images_per_second"] > 0 and len(r["runs"]) == 2 and r["finite"] and r["peak_memory_mb"] > 0
    reference, loader, fast = result["results"]
    assert (reference["data_source"], loader["data_source"], fast["data_source"]) == ("jpeg", "cache", "device")
    assert reference["precision"] == "fp32"
    assert result["speedup"] == pytest.approx(fast["images_per_second"] / reference["images_per_second"])
    assert "x ref" in format_bench(result)


def test_reference_dataset_falls_back_to_the_cache_without_jpegs(tiny_root, isolated_cache, tmp_path):
    import dataclasses

    from slotlib.data.eurosat import load_eurosat
    ds = dataclasses.replace(load_eurosat(str(tiny_root)), root=tmp_path)  # no JPEGs there
    tiles = JpegTiles(ds, [0, 1], reference_transform(32, (0, 0, 0), (1, 1, 1)))
    image, label = tiles[1]
    assert tiles.source == "cache" and image.shape == (3, 32, 32) and label == int(ds.labels[1])


def test_bench_cli_json_and_bad_input(tiny_root, isolated_cache, capsys, monkeypatch):
    monkeypatch.setenv("EUROSAT_ROOT", str(tiny_root))
    args = ["bench", "--pipeline", "fast", "--image-size", "32", "--batch-size", "8", "--head", "linear",
            "--device", "cpu", "--steps", "1", "--warmup", "0", "--repeats", "1", "--set", "pretrained=false",
            "--set", "hidden_dim=32"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["head"] == "linear" and [r["pipeline"] for r in out["results"]] == ["fast"] and "speedup" not in out
    assert main(["bench", "--steps", "0", "--device", "cpu"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_bench_times_every_head_and_batch_size_in_one_process(tiny_root, isolated_cache):
    result = benchmark.bench(tiny(tiny_root), pipelines=("reference", "fast"), heads=("scouter", "slot"),
                             batch_sizes=(4, 8), steps=1, warmup=0, repeats=1, workers=0)
    combos = [(r["head"], r["batch_size"], r["pipeline"]) for r in result["results"]]
    assert combos == [(h, b, p) for h in ("scouter", "slot") for b in (4, 8) for p in ("reference", "fast")]
    assert set(result["speedups"]) == {"scouter/4", "scouter/8", "slot/4", "slot/8"} and "speedup" not in result
    text = format_bench(result)
    assert text.count("reference") == 4 and "slot" in text


def test_a_failing_run_is_reported_and_the_rest_still_run(tiny_root, isolated_cache, monkeypatch):
    real = benchmark.run_pipeline

    def flaky(pipeline, config, *args, **kwargs):
        if config.data.batch_size == 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipeline, config, *args, **kwargs)

    monkeypatch.setattr(benchmark, "run_pipeline", flaky)
    result = benchmark.bench(tiny(tiny_root), pipelines=("fast",), batch_sizes=(4, 8), steps=1, warmup=0,
                             repeats=1, workers=0)
    ok, failed = result["results"]
    assert ok["error"] is None and ok["images_per_second"] > 0
    assert failed["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "FAILED: OutOfMemoryError" in format_bench(result)


def test_peers_wait_for_each_other(tmp_path):
    from slotlib.config import ConfigError

    benchmark.wait_for_peers(tmp_path / "ready", 1)  # alone: returns at once
    with pytest.raises(ConfigError, match="--peers 3: only 2 processes"):
        benchmark.wait_for_peers(tmp_path / "ready", 3, timeout_s=0.2)


def test_bench_cli_rejects_peers_without_a_folder(capsys):
    assert main(["bench", "--peers", "2", "--device", "cpu"]) == 2
    assert "--peers" in capsys.readouterr().err


def test_profile_lists_the_operators_that_cost_most(tiny_root, isolated_cache):
    result = benchmark.bench(tiny(tiny_root, head="linear"), pipelines=("fast",), steps=1, warmup=0, repeats=1,
                             workers=0, profile=2)
    prof = result["results"][0]["profile"]
    assert prof["steps"] == 2 and prof["clock"] == "cpu" and 0 < len(prof["top"]) <= 15
    assert prof["top"][0]["self_ms"] >= prof["top"][-1]["self_ms"] > 0
    assert "operators that took most" in format_bench(result)
