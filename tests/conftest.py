"""Fast, CPU-only tests by default; slow and GPU tests are skipped with a reason, never silently."""

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (minutes on CPU)")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("SLOTLIB_RUN_SLOW") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with `make test-slow` (pytest --run-slow)"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device on this machine"))



CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake")


def write_learnable_eurosat(image_dir, per_class: int, seed: int = 0):
    """Tiles whose class shows in their colour and stripe direction, so a few epochs can learn them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    for k, cls in enumerate(CLASSES):
        folder = image_dir / cls
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(k * 70) % 256, (k * 130 + 40) % 256, (k * 200 + 90) % 256], dtype=np.float32)
        stripes = np.sin((xx if k % 2 else yy) * (0.2 + 0.1 * (k // 2)))[..., None] * 40
        for n in range(1, per_class + 1):
            noise = rng.normal(0, 25, size=(64, 64, 3))
            tile = np.clip(colour + stripes + noise, 0, 255).astype(np.uint8)
            Image.fromarray(tile, mode="RGB").save(folder / f"{cls}_{n}.jpg", quality=95)
    return image_dir


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A data root in torchvision's layout with 12 learnable tiles per class."""
    root = tmp_path_factory.mktemp("tiny_eurosat")
    write_learnable_eurosat(root / "eurosat" / "2750", per_class=12)
    return root


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded caches of test data out of the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "slotlib_cache"
    monkeypatch.setenv("SLOTLIB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_run(tiny_root, tmp_path_factory):
    """A finished SCOUTER cell (2 slots per class) trained for one epoch per stage on the tiny tiles."""
    from slotlib.classify import fit as training
    from slotlib.config import Config

    out = tmp_path_factory.mktemp("explain") / "cell"
    cfg = Config.from_params({"data_root": str(tiny_root), "image_size": 64, "batch_size": 16, "pretrained": False,
                              "hidden_dim": 32, "slot_iters": 2, "slots_per_class": 2, "stage1_epochs": 1,
                              "stage2_epochs": 1, "device": "cpu", "explain_tiles": 10})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLOTLIB_CACHE", str(tmp_path_factory.getbasetemp() / "slotlib_cache"))
        metrics = training.train(cfg, out, progress=False)
    return out, metrics
