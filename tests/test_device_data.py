"""The fast data path: device-resident tiles, batched augmentation matching the per-tile transforms."""

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2

from slotlib.data import device as dd
from slotlib.data.transforms import build_transforms

N = 1500  # samples per distribution comparison: KS statistics below 0.08 mean "same distribution" here


def ramp_tile(h=64, w=64) -> np.ndarray:
    """Red rises left to right, green top to bottom, blue constant: crop, flip and jitter all show."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full((h, w), 128.0)], -1).round().astype(np.uint8)      # [H,W,3]


def statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image numbers that reveal the crop scale, the flip and the colour spread."""
    red = images[:, 0]                                                                  # [B,S,S]
    s = red.shape[-1]
    left, right = red[:, :, : s // 2].mean((1, 2)), red[:, :, s // 2:].mean((1, 2))
    return {"flipped": (right < left).float().numpy(),                                 # the ramp runs backwards
            "red_spread": red.std((1, 2)).numpy(),                                      # ~ crop width
            "green_spread": images[:, 1].std((1, 2)).numpy(),                           # ~ crop height
            "brightness": images.mean((1, 2, 3)).numpy()}


def reference_outputs(size: int, n: int = N, **options) -> torch.Tensor:
    train_tf, _ = build_transforms(size, (0, 0, 0), (1, 1, 1), augment=True, **options)
    tile = torch.from_numpy(ramp_tile()).permute(2, 0, 1).contiguous()
    torch.manual_seed(0)
    return torch.stack([train_tf(tile) for _ in range(n)])


def fast_outputs(size: int, n: int = N, **options) -> torch.Tensor:
    tiles = torch.from_numpy(ramp_tile()).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)    # [B,3,H,W]
    loader = dd.DeviceLoader(tiles, torch.zeros(n, dtype=torch.long), np.arange(n), image_size=size,
                             batch_size=n, mean=(0, 0, 0), std=(1, 1, 1), train=True, augment=True, seed=1,
                             **options)
    images, _ = next(iter(loader))
    return images


@pytest.mark.parametrize("size", [64, 32])
def test_fast_augmentation_matches_the_per_tile_transforms_in_distribution(size):
    ref, fast = statistics(reference_outputs(size)), statistics(fast_outputs(size))
    assert abs(ref["flipped"].mean() - 0.5) < 0.05 and abs(fast["flipped"].mean() - 0.5) < 0.05
    for key in ("red_spread", "green_spread", "brightness"):
        result = ks_2samp(ref[key], fast[key])
        assert result.statistic < 0.08, (key, result, ref[key].mean(), fast[key].mean())
    # and the spread itself, the quantity colour jitter controls
    assert fast["brightness"].std() == pytest.approx(ref["brightness"].std(), rel=0.15)


def red_direction(images: torch.Tensor) -> np.ndarray:
    """Where the red ramp rises, per image: 0 right, 1 left, 2 down, 3 up (the tile's own: right)."""
    red = images[:, 0]                                                                  # [B,S,S]
    dx = (red[:, :, 1:] - red[:, :, :-1]).mean((1, 2))
    dy = (red[:, 1:] - red[:, :-1]).mean((1, 2))
    horizontal = dx.abs() > dy.abs()
    return torch.where(horizontal, (dx < 0).long(), 2 + (dy < 0).long()).numpy()


def test_crop_scale_and_dihedral_match_the_per_tile_transforms():
    options = {"crop_scale": 0.5, "dihedral": True}
    ref, fast = reference_outputs(32, **options), fast_outputs(32, **options)
    for out in (ref, fast):  # the quarter turns: the ramp rises towards each side about equally often
        share = np.bincount(red_direction(out), minlength=4) / len(out)
        assert np.abs(share - 0.25).max() < 0.05, share
    ref_stats, fast_stats = statistics(ref), statistics(fast)
    for key in ("brightness",):
        assert ks_2samp(ref_stats[key], fast_stats[key]).statistic < 0.08
    spread = lambda out: torch.maximum(out[:, 0].std((1, 2)), out[:, 1].std((1, 2))).numpy()  # ~ crop size
    assert ks_2samp(spread(ref), spread(fast)).statistic < 0.08
    # a larger smallest crop: crops are larger on average than at the default 0.08
    assert spread(fast).mean() > spread(fast_outputs(32, dihedral=True)).mean() * 1.1
    # without dihedral the ramp never turns by more than the 15 degree rotation
    assert set(red_direction(fast_outputs(32))) <= {0, 1}


def test_crop_boxes_follow_torchvisions_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    boxes = dd.crop_boxes(4000, 64, 64, g, "cpu")                                      # [B,4]
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    torch.manual_seed(0)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.zeros(3, 64, 64), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(4000)], dtype=torch.float)
    for ours, theirs in ((h * w / 4096, ref[:, 2] * ref[:, 3] / 4096), (w / h, ref[:, 3] / ref[:, 2]),
                         (left, ref[:, 1]), (top, ref[:, 0])):
        assert ks_2samp(ours.numpy(), theirs.numpy()).statistic < 0.05


def test_geometry_without_randomness_is_exact():
    tiles = torch.from_numpy(ramp_tile()).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    same = dd.geometric(tiles, 64, g, crop=False, flip=False, rotation=0.0)
    assert torch.allclose(same, tiles, atol=1e-3)
    flipped = dd.geometric(tiles, 64, g, crop=False, flip=True, rotation=0.0)
    for out in flipped:  # each sample is the tile or its mirror image
        assert torch.allclose(out, tiles[0], atol=1e-3) or torch.allclose(out, tiles[0].flip(-1), atol=1e-3)


def test_rotation_fills_the_corners_with_zero_as_torchvision():
    tiles = torch.full((64, 3, 64, 64), 200.0)
    out = dd.geometric(tiles, 64, torch.Generator().manual_seed(0), crop=False, flip=False)
    corner_zero = (out[:, :, 0, 0] == 0).all(1).float().mean()
    assert 0.7 < corner_zero < 1.0            # every rotation over ~1 degree blanks the corner pixel
    assert torch.allclose(out[:, :, 32, 32], torch.tensor(200.0))  # the centre never moves


@pytest.mark.parametrize("size", [224, 64, 32])
def test_evaluation_resize_matches_the_per_tile_transform(size):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    _, eval_tf = build_transforms(size, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), augment=False)
    ref = eval_tf(torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous())
    loader = dd.DeviceLoader(dd.tiles_on(tiles, torch.device("cpu")), torch.arange(4), np.arange(4),
                             image_size=size, batch_size=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                             train=False, augment=True)
    fast, _ = next(iter(loader))
    level = 1 / 255 / 0.2  # one grey level, in normalised units
    assert fast.shape == ref.shape and (fast - ref).abs().max() <= level + 1e-5


def test_loader_covers_each_tile_once_and_reseeding_repeats_the_epoch():
    m = 50
    tiles = torch.arange(m, dtype=torch.uint8).view(m, 1, 1, 1).expand(m, 3, 8, 8).contiguous()
    labels = torch.arange(m)
    idx = np.arange(0, m, 2)
    loader = dd.DeviceLoader(tiles, labels, idx, image_size=16, batch_size=4, mean=(0, 0, 0), std=(1, 1, 1),
                             train=True, augment=True, seed=3)
    assert len(loader) == 7
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == idx.tolist()
    loader.generator.manual_seed(9)
    first = [(x.clone(), y.clone()) for x, y in loader]
    loader.generator.manual_seed(9)
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    val = dd.DeviceLoader(tiles, labels, idx, image_size=8, batch_size=4, mean=(0, 0, 0), std=(1, 1, 1),
                          train=False, augment=True)
    xs, ys = zip(*val)
    assert torch.cat(ys).tolist() == idx.tolist()                      # evaluation keeps the order
    assert torch.equal(torch.cat(xs)[:, 0, 0, 0], torch.cat(ys).float() / 255)  # images match their labels


def test_tiles_on_copies_the_read_only_cache_once(tmp_path):
    images = np.lib.format.open_memmap(tmp_path / "t.npy", mode="w+", dtype=np.uint8, shape=(5, 4, 4, 3))
    images[:] = np.arange(5 * 4 * 4 * 3).reshape(5, 4, 4, 3) % 256
    images.flush()
    ro = np.load(tmp_path / "t.npy", mmap_mode="r")
    tiles = dd.tiles_on(ro, torch.device("cpu"), chunk=2)
    assert tiles.shape == (5, 3, 4, 4) and torch.equal(tiles.permute(0, 2, 3, 1), torch.from_numpy(np.array(ro)))


@pytest.mark.parametrize("pipeline", ["fast", "loader"])
def test_eval_size_resizes_only_the_evaluation_splits(pipeline):
    from types import SimpleNamespace

    from slotlib.data.transforms import make_loaders

    rng = np.random.default_rng(0)
    ds = SimpleNamespace(images=rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8), labels=np.arange(12) % 3)
    splits = {"train": np.arange(6), "val": np.arange(6, 9), "test": np.arange(9, 12)}
    common = dict(image_size=48, batch_size=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), eval_size=80)
    loaders = (dd.make_device_loaders(ds, splits, **common) if pipeline == "fast" else make_loaders(ds, splits, **common))
    sizes = {name: next(iter(loader))[0].shape[-1] for name, loader in loaders.items()}
    assert sizes == {"train": 48, "val": 80, "test": 80}
