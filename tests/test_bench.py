"""`slotlib bench`: both pipelines run the training step and report comparable figures (tiny data, CPU)."""

import json

import pytest

from slotlib import bench as benchmark
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
    assert "fast / reference" in benchmark.format_bench(result)


def test_reference_dataset_falls_back_to_the_cache_without_jpegs(tiny_root, isolated_cache, tmp_path):
    import dataclasses

    from slotlib.data import load_eurosat
    ds = dataclasses.replace(load_eurosat(str(tiny_root)), root=tmp_path)  # no JPEGs there
    tiles = benchmark.JpegTiles(ds, [0, 1], benchmark.reference_transform(32, (0, 0, 0), (1, 1, 1)))
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
