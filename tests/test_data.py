"""Tests for slotlib.data: locating, caching, splitting and loading EuroSAT.

Everything except the `data`-marked tests runs on a tiny fake EuroSAT written
to tmp_path. The `data` tests read the real copy under $EUROSAT_ROOT and use
the default cache ($SLOTLIB_CACHE or ~/.cache/slotlib), so only the first run
pays for decoding the 27,000 JPEGs.
"""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slotlib.data import cache
from slotlib.data.eurosat import (
    EUROSAT_CLASSES,
    EuroSAT,
    default_data_root,
    find_eurosat,
    load_eurosat,
    locate_or_download,
)
from slotlib.data.splits import split_indices
from slotlib.data.transforms import build_transforms, make_loaders, normalization, seed_worker

FAKE_INDICES = (1, 2, 10)  # 10 after 2 checks the natural sort


def write_tile(path: Path, rng: np.random.Generator, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=95)


def make_fake_eurosat(image_dir: Path, indices: tuple[int, ...] = FAKE_INDICES) -> Path:
    """Write a few random 64x64 JPEGs per class into ``image_dir/<Class>/``."""
    rng = np.random.default_rng(0)
    for cls in EUROSAT_CLASSES:
        for n in indices:
            write_tile(image_dir / cls / f"{cls}_{n}.jpg", rng)
    return image_dir


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A data root in the torchvision layout: fake_root/eurosat/2750/<Class>/..."""
    root = tmp_path / "data"
    make_fake_eurosat(root / "eurosat" / "2750")
    return root


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def fake_ds(fake_root: Path, cache_dir: Path) -> EuroSAT:
    return load_eurosat(fake_root, download=False, cache_dir=cache_dir)


# ---------------------------------------------------------------- locating


def test_default_data_root_follows_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EUROSAT_ROOT", "/somewhere")
    assert default_data_root() == "/somewhere"
    monkeypatch.delenv("EUROSAT_ROOT")
    assert default_data_root() == "./data"


@pytest.mark.parametrize("layout", ["eurosat/2750", "2750", "."])
def test_find_eurosat_accepts_each_layout(tmp_path: Path, layout: str) -> None:
    image_dir = tmp_path / layout
    for cls in EUROSAT_CLASSES:
        (image_dir / cls).mkdir(parents=True)
    assert find_eurosat(tmp_path) == image_dir


def test_find_eurosat_needs_all_ten_classes(tmp_path: Path) -> None:
    for cls in EUROSAT_CLASSES[:-1]:
        (tmp_path / "2750" / cls).mkdir(parents=True)
    assert find_eurosat(tmp_path) is None


def test_failed_download_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.eurosat as tv_eurosat

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_eurosat, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError) as info:
        locate_or_download(tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / "eurosat" / "2750") in message
    assert "EUROSAT_ROOT" in message
    assert "no network" in message


def test_missing_data_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="EUROSAT_ROOT"):
        locate_or_download(tmp_path / "nowhere", download=False)


# ---------------------------------------------------------------- loading + cache


def test_load_shapes_order_and_pixels(fake_ds: EuroSAT, fake_root: Path) -> None:
    n = len(EUROSAT_CLASSES) * len(FAKE_INDICES)
    assert fake_ds.images.shape == (n, 64, 64, 3) and fake_ds.images.dtype == np.uint8
    assert fake_ds.labels.shape == (n,) and fake_ds.labels.dtype == np.int64
    assert fake_ds.classes == EUROSAT_CLASSES
    assert fake_ds.root == fake_root / "eurosat" / "2750"
    assert fake_ds.paths[:3] == ("AnnualCrop/AnnualCrop_1.jpg", "AnnualCrop/AnnualCrop_2.jpg",
                                 "AnnualCrop/AnnualCrop_10.jpg")
    assert list(fake_ds.labels) == [c for c in range(10) for _ in FAKE_INDICES]
    for i in (0, 17, n - 1):
        expected = np.asarray(Image.open(fake_ds.root / fake_ds.paths[i]))
        np.testing.assert_array_equal(fake_ds.images[i], expected)


def test_second_load_hits_cache(
    fake_ds: EuroSAT, fake_root: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(path: object) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache was warm")

    monkeypatch.setattr(cache, "decode_tile", no_decoding)
    again = load_eurosat(fake_root, download=False, cache_dir=cache_dir)
    assert again.fingerprint == fake_ds.fingerprint
    assert again.paths == fake_ds.paths
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, fake_ds.images)


def test_cache_goes_to_cache_dir_not_data_root(fake_root: Path, cache_dir: Path) -> None:
    before = files_under(fake_root)
    ds = load_eurosat(fake_root, download=False, cache_dir=cache_dir)
    assert files_under(fake_root) == before
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        f"eurosat-{ds.fingerprint}.json",
        f"eurosat-{ds.fingerprint}.npy",
    ]


def test_cache_dir_defaults_to_env(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOTLIB_CACHE", str(tmp_path / "envcache"))
    ds = load_eurosat(fake_root, download=False)
    assert (tmp_path / "envcache" / f"eurosat-{ds.fingerprint}.npy").is_file()


def test_fingerprint_changes_when_a_file_is_added(
    fake_ds: EuroSAT, fake_root: Path, cache_dir: Path
) -> None:
    write_tile(fake_ds.root / "Forest" / "Forest_11.jpg", np.random.default_rng(1))
    grown = load_eurosat(fake_root, download=False, cache_dir=cache_dir)
    assert grown.fingerprint != fake_ds.fingerprint
    assert len(grown) == len(fake_ds) + 1
    assert "Forest/Forest_11.jpg" in grown.paths


def test_failed_decode_leaves_no_partial_cache(
    fake_root: Path, cache_dir: Path
) -> None:
    (fake_root / "eurosat" / "2750" / "River" / "River_3.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError):
        load_eurosat(fake_root, download=False, cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []


@pytest.mark.parametrize("defect", ["garbage bytes", "32x32"])
def test_bad_tile_is_named(fake_root: Path, cache_dir: Path, defect: str) -> None:
    bad = fake_root / "eurosat" / "2750" / "Pasture" / "Pasture_5.jpg"
    if defect == "garbage bytes":
        bad.write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    else:
        write_tile(bad, np.random.default_rng(2), size=32)
    with pytest.raises(ValueError) as info:
        load_eurosat(fake_root, download=False, cache_dir=cache_dir)
    assert str(bad) in str(info.value)
    assert "64x64" in str(info.value)


def test_per_class_limit(fake_root: Path, cache_dir: Path) -> None:
    full = load_eurosat(fake_root, download=False, cache_dir=cache_dir)
    small = load_eurosat(fake_root, download=False, cache_dir=cache_dir, per_class_limit=2)
    assert np.bincount(small.labels).tolist() == [2] * len(EUROSAT_CLASSES)
    assert small.paths[:2] == ("AnnualCrop/AnnualCrop_1.jpg", "AnnualCrop/AnnualCrop_2.jpg")
    assert small.fingerprint == f"{full.fingerprint}-limit2"
    i = full.paths.index(small.paths[5])
    np.testing.assert_array_equal(small.images[5], full.images[i])
    with pytest.raises(ValueError, match="per_class_limit"):
        load_eurosat(fake_root, download=False, cache_dir=cache_dir, per_class_limit=0)


# ---------------------------------------------------------------- random split


def assert_partition(splits: dict[str, np.ndarray]) -> None:
    assert set(splits) == {"train", "val", "test"}
    for idx in splits.values():
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    joined = np.concatenate(list(splits.values()))
    assert len(joined) == len(np.unique(joined))  # pairwise disjoint


def test_random_split_partition_and_sizes(fake_ds: EuroSAT) -> None:
    splits = split_indices(fake_ds, "random", split_fractions=(0.5, 0.3, 0.2))
    assert_partition(splits)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(fake_ds)))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [15, 9, 6]


def test_random_split_depends_only_on_seed(fake_ds: EuroSAT) -> None:
    a = split_indices(fake_ds, split_seed=7)
    b = split_indices(fake_ds, split_seed=7)
    c = split_indices(fake_ds, split_seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "fractions", [(0.7, 0.3), (0.7, 0.2, 0.2), (1.0, 0.0, 0.0), (0.8, -0.1, 0.3)]
)
def test_random_split_rejects_bad_fractions(fake_ds: EuroSAT, fractions: tuple) -> None:
    with pytest.raises(ValueError, match="split_fractions"):
        split_indices(fake_ds, split_fractions=fractions)


# ---------------------------------------------------------------- split files


CLASS_OF = {cls: i for i, cls in enumerate(EUROSAT_CLASSES)}
FILE_SPLIT = {"train": (1,), "val": (2,), "test": (10,)}  # tile index -> split


def file_split_entries(name: str) -> list[str]:
    return [f"{cls}/{cls}_{n}.jpg" for cls in EUROSAT_CLASSES for n in FILE_SPLIT[name]]


def write_coop_json(path: Path, overlap: bool = False, wrong_label: bool = False) -> Path:
    payload = {
        name: [[rel, CLASS_OF[rel.split("/")[0]], rel.split("/")[0]] for rel in file_split_entries(name)]
        for name in FILE_SPLIT
    }
    if overlap:
        payload["test"].append(payload["train"][0])
    if wrong_label:
        payload["val"][0][1] = (payload["val"][0][1] + 1) % 10
    path.write_text(json.dumps(payload))
    return path


def write_torchgeo_lists(folder: Path, overlap: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILE_SPLIT:
        names = [Path(rel).name for rel in file_split_entries(name)]
        if overlap and name == "val":
            names.append("Forest_1.jpg")
        # torchgeo's lists have no trailing newline.
        (folder / f"eurosat-{name}.txt").write_text("\n".join(names))
    return folder


def assert_matches_file_split(ds: EuroSAT, splits: dict[str, np.ndarray]) -> None:
    assert_partition(splits)
    for name, wanted in FILE_SPLIT.items():
        got = {int(Path(ds.paths[i]).stem.rsplit("_", 1)[1]) for i in splits[name]}
        assert got == set(wanted)
        assert len(splits[name]) == len(EUROSAT_CLASSES) * len(wanted)


def test_coop_json_split(fake_ds: EuroSAT, tmp_path: Path) -> None:
    splits = split_indices(fake_ds, str(write_coop_json(tmp_path / "split.json")))
    assert_matches_file_split(fake_ds, splits)


@pytest.mark.parametrize("form", ["folder", "one file", "prefix"])
def test_torchgeo_split(fake_ds: EuroSAT, tmp_path: Path, form: str) -> None:
    folder = write_torchgeo_lists(tmp_path / "torchgeo")
    spec = {
        "folder": folder,
        "one file": folder / "eurosat-val.txt",
        "prefix": folder / "eurosat",
    }[form]
    assert_matches_file_split(fake_ds, split_indices(fake_ds, spec))


def test_named_torchgeo_split_is_found_beside_the_data(fake_ds: EuroSAT, fake_root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("the lists are here: no download"))
    write_torchgeo_lists(fake_root / "eurosat" / "splits" / "torchgeo")
    assert_matches_file_split(fake_ds, split_indices(fake_ds, "torchgeo"))


def test_named_torchgeo_split_downloads_the_lists(fake_ds: EuroSAT, fake_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    source = write_torchgeo_lists(tmp_path / "host")
    fetched = []

    def download_url(url, root, filename):   # torchgeo's host, served from a folder
        fetched.append(url)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes((source / Path(url).name).read_bytes())

    monkeypatch.setattr(tv_utils, "download_url", download_url)
    assert_matches_file_split(fake_ds, split_indices(fake_ds, "torchgeo"))
    assert len(fetched) == 3 and all(u.startswith("https://hf.co/datasets/torchgeo/eurosat/") for u in fetched)
    assert (fake_root / "eurosat" / "splits" / "torchgeo" / "eurosat-test.txt").is_file()


def test_named_torchgeo_split_without_network_says_where(fake_ds: EuroSAT, fake_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def offline(url, root, filename):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_text("partial")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    folder = fake_root / "eurosat" / "splits" / "torchgeo"
    with pytest.raises(FileNotFoundError, match=r"split=torchgeo needs eurosat-train.txt.*no network"):
        split_indices(fake_ds, "torchgeo")
    assert not list(folder.glob("*.txt"))   # nothing half-downloaded is left to be mistaken for the lists


def test_split_file_drops_tiles_not_in_dataset(fake_root: Path, cache_dir: Path,
                                               tmp_path: Path) -> None:
    small = load_eurosat(fake_root, download=False, cache_dir=cache_dir, per_class_limit=2)
    splits = split_indices(small, write_coop_json(tmp_path / "split.json"))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [10, 10, 0]


def test_overlapping_split_files_are_rejected(fake_ds: EuroSAT, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AnnualCrop_1.jpg"):
        split_indices(fake_ds, write_coop_json(tmp_path / "split.json", overlap=True))
    with pytest.raises(ValueError, match="Forest_1.jpg"):
        split_indices(fake_ds, write_torchgeo_lists(tmp_path / "tg", overlap=True))


def test_json_label_must_match_folder(fake_ds: EuroSAT, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AnnualCrop_2.jpg"):
        split_indices(fake_ds, write_coop_json(tmp_path / "split.json", wrong_label=True))


def test_missing_split_files(fake_ds: EuroSAT, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        split_indices(fake_ds, tmp_path / "nope.json")
    folder = write_torchgeo_lists(tmp_path / "tg")
    (folder / "eurosat-test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="eurosat-test.txt"):
        split_indices(fake_ds, folder / "eurosat-train.txt")
    with pytest.raises(FileNotFoundError, match="random"):
        split_indices(fake_ds, "radnom")


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("augment", [True, False])
def test_transforms_shape_and_dtype(augment: bool) -> None:
    train_tf, eval_tf = build_transforms(96, (0.5,) * 3, (0.25,) * 3, augment=augment)
    tile = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    for tf in (train_tf, eval_tf):
        out = tf(tile)
        assert out.shape == (3, 96, 96) and out.dtype == torch.float32
    if not augment:
        assert train_tf is eval_tf


def test_eval_transform_normalises() -> None:
    _, eval_tf = build_transforms(64, (0.5,) * 3, (0.5,) * 3)
    out = eval_tf(torch.full((3, 64, 64), 255, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.ones(3, 64, 64))


def test_normalization_from_timm() -> None:
    assert normalization("mobilevitv2_075") == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalization("mobilenetv2_100") == imagenet
    assert normalization("mobilenetv2_100.ra_in1k") == imagenet
    with pytest.raises(ValueError, match="not_a_model"):
        normalization("not_a_model")


# ---------------------------------------------------------------- loaders


def first_epoch(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_train_order_reproducible(fake_ds: EuroSAT) -> None:
    splits = split_indices(fake_ds)

    def build(seed: int) -> dict[str, torch.utils.data.DataLoader]:
        return make_loaders(fake_ds, splits, image_size=32, batch_size=4, mean=(0.5,) * 3,
                            std=(0.5,) * 3, augment=False, seed=seed)

    loaders = build(3)
    x1, y1 = first_epoch(loaders["train"])
    x2, y2 = first_epoch(build(3)["train"])
    x3, _ = first_epoch(build(4)["train"])
    assert x1.shape == (len(splits["train"]), 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    # val/test keep dataset order
    _, yv = first_epoch(loaders["val"])
    assert yv.tolist() == fake_ds.labels[splits["val"]].tolist()


def test_loaders_with_workers(fake_ds: EuroSAT) -> None:
    loaders = make_loaders(fake_ds, split_indices(fake_ds), image_size=32, batch_size=8,
                           mean=(0.5,) * 3, std=(0.5,) * 3, num_workers=1, seed=0,
                           drop_last_train=True)
    train = loaders["train"]
    assert train.persistent_workers and train.worker_init_fn is seed_worker
    x, y = first_epoch(train)
    assert x.shape[0] == 16 and y.dtype == torch.int64  # 21 train tiles, drop_last


# ---------------------------------------------------------------- real EuroSAT

REAL_COUNTS = {
    "AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500,
    "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000,
    "River": 2500, "SeaLake": 3000,
}


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = os.environ.get("EUROSAT_ROOT")
    if not root:
        pytest.skip("EUROSAT_ROOT is not set; point it at the folder containing eurosat/2750")
    return Path(root)


@pytest.fixture(scope="module")
def real_ds(real_root: Path) -> EuroSAT:
    # Default cache location on purpose: only the first run decodes 27k JPEGs.
    return load_eurosat(real_root, download=False)


@pytest.mark.data
def test_real_eurosat_counts(real_ds: EuroSAT) -> None:
    assert real_ds.images.shape == (27000, 64, 64, 3)
    counts = np.bincount(real_ds.labels, minlength=10)
    assert dict(zip(real_ds.classes, counts.tolist())) == REAL_COUNTS


@pytest.mark.data
def test_real_random_split(real_ds: EuroSAT) -> None:
    splits = split_indices(real_ds, "random", split_seed=42)
    assert_partition(splits)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [18900, 4050, 4050]


@pytest.mark.data
@pytest.mark.parametrize(
    "relpath, sizes",
    [
        ("eurosat/split_zhou_EuroSAT.json", [13500, 5400, 8100]),
        ("eurosat/splits/torchgeo", [16200, 5400, 5400]),
        ("torchgeo", [16200, 5400, 5400]),
    ],
)
def test_real_shipped_splits(
    real_ds: EuroSAT, real_root: Path, relpath: str, sizes: list[int]
) -> None:
    splits = split_indices(real_ds, relpath if relpath == "torchgeo" else real_root / relpath)
    assert_partition(splits)
    assert [len(splits[k]) for k in ("train", "val", "test")] == sizes
