"""EuroSAT RGB tiles: locate, decode once into a cache, split, transform, load.

The dataset is the 10-class, 27,000-tile RGB release of EuroSAT in the
torchvision layout ``<root>/eurosat/2750/<Class>/<Class>_<n>.jpg`` (64x64
JPEGs). Every JPEG is decoded a single time into a uint8 ``.npy`` cache keyed
by a fingerprint of the file list, so later runs memory-map it in about a
second instead of decoding 27k files again.

Splits: a seeded random 70/15/15 split, the fixed CoOp JSON split
(``split_zhou_EuroSAT.json``) or the torchgeo text lists
(``eurosat-{train,val,test}.txt``).

References
----------
- P. Helber, B. Bischke, A. Dengel, D. Borth. "EuroSAT: A Novel Dataset and
  Deep Learning Benchmark for Land Use and Land Cover Classification."
  IEEE JSTARS 12(7), 2019. https://github.com/phelber/EuroSAT
- K. Zhou, J. Yang, C. C. Loy, Z. Liu. "Learning to Prompt for
  Vision-Language Models" (CoOp). IJCV 2022 -- source of the JSON split.
- M. Neumann, A. S. Pinto, X. Zhai, N. Houlsby. "In-domain representation
  learning for remote sensing." arXiv:1911.06721, 2019 -- the train/val/test
  lists that torchgeo uses.
- torchvision ``datasets.EuroSAT`` (download layout) and
  ``transforms.v2`` (augmentations); timm ``PretrainedCfg`` (mean/std).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import tempfile
import urllib.error
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

TILE_SIZE = 64
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg")
# Bump when the cache layout changes so stale caches are rebuilt, not misread.
CACHE_FORMAT = 1


# --------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------


def default_data_root() -> str:
    """``$EUROSAT_ROOT`` if set, else ``./data``."""
    return os.environ.get("EUROSAT_ROOT") or "./data"


def candidate_dirs(data_root: str | Path) -> tuple[Path, ...]:
    """The folders that may directly hold the class folders, most specific first."""
    root = Path(data_root).expanduser()
    return (root / "eurosat" / "2750", root / "2750", root)


def holds_class_dirs(folder: Path) -> bool:
    return all((folder / name).is_dir() for name in EUROSAT_CLASSES)


def find_eurosat(data_root: str | Path) -> Path | None:
    """Return the folder that directly holds the 10 class folders, or None.

    Accepted layouts: ``data_root/eurosat/2750``, ``data_root/2750`` and
    ``data_root`` itself. Extra folders next to the class folders are ignored.
    """
    for folder in candidate_dirs(data_root):
        if holds_class_dirs(folder):
            return folder
    return None


def download_eurosat(data_root: str | Path) -> None:
    """Download and unpack EuroSAT RGB with torchvision into ``data_root/eurosat/2750``."""
    from torchvision.datasets import EuroSAT as TorchvisionEuroSAT

    TorchvisionEuroSAT(root=str(Path(data_root).expanduser()), download=True)


def locate_or_download(data_root: str | Path, download: bool = True) -> Path:
    """Find EuroSAT under ``data_root``; download it there if absent and allowed.

    Raises FileNotFoundError listing the folders looked at when the data is
    neither present nor downloadable (e.g. no network).
    """
    found = find_eurosat(data_root)
    if found is not None:
        return found
    reason = "download=False"
    if download:
        try:
            download_eurosat(data_root)
        # URLError is an OSError; RuntimeError is torchvision's "not found"/md5 failure.
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            reason = f"the download failed ({type(err).__name__}: {err})"
        else:
            found = find_eurosat(data_root)
            if found is not None:
                return found
            reason = "the download finished but no class folders appeared"
    looked = ", ".join(str(p) for p in candidate_dirs(data_root))
    raise FileNotFoundError(
        f"EuroSAT class folders ({', '.join(EUROSAT_CLASSES[:2])}, ...) were not found in "
        f"any of [{looked}] and {reason}; set EUROSAT_ROOT or the `data_root` parameter "
        f"to the folder that contains eurosat/2750."
    )


# --------------------------------------------------------------------------
# Listing, fingerprinting and decoding
# --------------------------------------------------------------------------


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``Forest_2`` before ``Forest_10``."""
    # re.split with a capture group alternates text/digits, so positions compare like with like.
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_tiles(image_dir: Path) -> tuple[list[str], list[int], list[int]]:
    """Relative paths, labels and byte sizes of all tiles, by class then natural index."""
    paths: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    for label, cls in enumerate(EUROSAT_CLASSES):
        entries = [
            e
            for e in os.scandir(image_dir / cls)
            if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
        ]
        if not entries:
            raise ValueError(
                f"Class folder {image_dir / cls} holds no .jpg files; every EuroSAT class "
                f"folder must contain at least one tile."
            )
        entries.sort(key=lambda e: natural_key(e.name))
        paths.extend(f"{cls}/{e.name}" for e in entries)
        labels.extend([label] * len(entries))
        sizes.extend(e.stat().st_size for e in entries)
    return paths, labels, sizes


def fingerprint_of(paths: Sequence[str], sizes: Sequence[int]) -> str:
    """First 16 hex chars of sha256 over the sorted ``relpath<TAB>size`` lines."""
    lines = sorted(f"{p}\t{s}\n" for p, s in zip(paths, sizes))
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()[:16]


def decode_tile(path: str | Path) -> np.ndarray:
    """Decode one tile to uint8 [64, 64, 3]; ValueError if it is not a 64x64 RGB image.

    There is deliberately no ``convert('RGB')`` or resize: a grey, CMYK or
    wrongly sized file is a data problem that should be seen, not hidden.
    """
    # Opening outside the try lets a missing/unreadable file surface as its own OSError.
    with open(path, "rb") as fh:
        try:
            with Image.open(fh) as img:
                img.load()
                mode, size = img.mode, img.size
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, SyntaxError) as err:
            raise ValueError(
                f"Image {path} could not be decoded ({err}); expected a readable "
                f"{TILE_SIZE}x{TILE_SIZE} RGB JPEG."
            ) from err
    if mode != "RGB" or size != (TILE_SIZE, TILE_SIZE):
        raise ValueError(
            f"Image {path} is {size[0]}x{size[1]} in mode {mode}; expected a "
            f"{TILE_SIZE}x{TILE_SIZE} RGB image."
        )
    return array


def decode_worker_count() -> int:
    # PIL releases the GIL while decoding, so threads scale with cores; cap to stay polite.
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$SLOTLIB_CACHE`` if set, else ``~/.cache/slotlib``."""
    env = os.environ.get("SLOTLIB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slotlib"


def cache_paths(cache_dir: Path, fingerprint: str) -> tuple[Path, Path]:
    """(images .npy, metadata .json) for one fingerprint."""
    return cache_dir / f"eurosat-{fingerprint}.npy", cache_dir / f"eurosat-{fingerprint}.json"


def temp_path_in(folder: Path, prefix: str) -> Path:
    # Same folder as the target so os.replace is an atomic rename, never a cross-device copy.
    fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    os.close(fd)
    return Path(name)


def publish(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk and atomically rename it to ``target``."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    # mkstemp creates 0600 files; a cache may be shared by several users of one machine.
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def write_image_cache(target: Path, image_dir: Path, paths: Sequence[str]) -> None:
    """Decode every tile straight into a memory-mapped temp .npy, then rename it into place."""
    tmp = temp_path_in(target.parent, f".{target.name}.")
    try:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), TILE_SIZE, TILE_SIZE, 3)
        )

        def decode_into(i: int) -> None:
            out[i] = decode_tile(image_dir / paths[i])

        with ThreadPoolExecutor(max_workers=decode_worker_count()) as pool:
            # list() re-raises the first worker exception here.
            list(pool.map(decode_into, range(len(paths)), chunksize=256))
        out.flush()
        del out
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomically(target: Path, payload: dict) -> None:
    tmp = temp_path_in(target.parent, f".{target.name}.")
    try:
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_cache(
    cache_dir: Path, fingerprint: str, paths: Sequence[str]
) -> np.ndarray | None:
    """The memory-mapped images if a complete cache for exactly ``paths`` exists, else None."""
    npy, meta = cache_paths(cache_dir, fingerprint)
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        # A damaged cache is only a performance problem: rebuild it.
        return None
    expected_shape = (len(paths), TILE_SIZE, TILE_SIZE, 3)
    if (
        info.get("format") != CACHE_FORMAT
        or info.get("paths") != list(paths)
        or images.shape != expected_shape
        or images.dtype != np.uint8
    ):
        return None
    return images


# --------------------------------------------------------------------------
# Dataset record and loading
# --------------------------------------------------------------------------


# eq=False: comparing numpy arrays field by field is ambiguous and slow.
@dataclass(frozen=True, eq=False)
class EuroSAT:
    """All decoded tiles of one EuroSAT copy (or a per-class subset of it)."""

    images: np.ndarray  # uint8 [N, 64, 64, 3], may be a read-only memmap
    labels: np.ndarray  # int64 [N], index into `classes`
    paths: tuple[str, ...]  # "Class/Class_n.jpg", same order as images
    classes: tuple[str, ...]
    fingerprint: str
    root: Path  # folder that holds the class folders

    def __post_init__(self) -> None:
        n = len(self.paths)
        if len(self.images) != n or len(self.labels) != n:
            raise ValueError(
                f"EuroSAT fields disagree in length: {len(self.images)} images, "
                f"{len(self.labels)} labels and {n} paths; all three must be equal."
            )

    def __len__(self) -> int:
        return len(self.paths)


def check_per_class_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"per_class_limit={limit!r} is invalid; use None or a positive integer.")
    return int(limit)


def first_per_class(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first `limit` samples of each class, in dataset order."""
    keep = [np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def subset_per_class(ds: EuroSAT, limit: int) -> EuroSAT:
    idx = first_per_class(ds.labels, limit)
    return EuroSAT(
        images=np.ascontiguousarray(ds.images[idx]),
        labels=ds.labels[idx],
        paths=tuple(ds.paths[i] for i in idx),
        classes=ds.classes,
        fingerprint=f"{ds.fingerprint}-limit{limit}",
        root=ds.root,
    )


def load_eurosat(
    data_root: str | Path,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
    per_class_limit: int | None = None,
) -> EuroSAT:
    """Locate EuroSAT and return all tiles, decoding the JPEGs only on the first call.

    Samples are ordered by class (``EUROSAT_CLASSES`` order) and then by the
    natural file index. The cache (``eurosat-<fingerprint>.npy`` + ``.json``)
    lives in ``cache_dir``, else ``$SLOTLIB_CACHE``, else ``~/.cache/slotlib``;
    nothing is ever written to the data root. ``per_class_limit`` keeps the
    first n tiles of each class after loading the full cache.
    """
    limit = None if per_class_limit is None else check_per_class_limit(per_class_limit)
    image_dir = locate_or_download(data_root, download=download)
    paths, labels, sizes = list_tiles(image_dir)
    fingerprint = fingerprint_of(paths, sizes)

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    images = read_cache(cache, fingerprint, paths)
    if images is None:
        npy, meta = cache_paths(cache, fingerprint)
        write_image_cache(npy, image_dir, paths)
        # Metadata goes last: its presence marks a complete cache.
        write_json_atomically(
            meta,
            {
                "format": CACHE_FORMAT,
                "fingerprint": fingerprint,
                "classes": list(EUROSAT_CLASSES),
                "paths": paths,
                "labels": labels,
            },
        )
        images = np.load(npy, mmap_mode="r")

    ds = EuroSAT(
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        paths=tuple(paths),
        classes=EUROSAT_CLASSES,
        fingerprint=fingerprint,
        root=image_dir,
    )
    return ds if limit is None else subset_per_class(ds, limit)


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if (
        len(values) != 3
        or not all(math.isfinite(f) and f > 0 for f in values)
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise ValueError(
            f"split_fractions={tuple(fractions)!r} is invalid; give 3 positive numbers "
            f"(train, val, test) that sum to 1."
        )
    return values[0], values[1], values[2]


def random_split(n: int, seed: int, fractions: Sequence[float]) -> dict[str, np.ndarray]:
    f_train, f_val, _ = check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(n, round(f_train * n))
    n_val = min(n - n_train, round(f_val * n))
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return {name: np.sort(part).astype(np.int64) for name, part in zip(SPLIT_NAMES, parts)}


def tile_stem(name: str) -> str:
    """``Forest/Forest_7.jpg`` -> ``Forest_7``.

    Matching on the stem also accepts lists written for the multispectral
    release (``Forest_7.tif``), which name the same tiles.
    """
    return Path(name.replace("\\", "/")).stem


def read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise FileNotFoundError(f"Split file {path} could not be read ({err}).") from err


def read_coop_json(path: Path) -> dict[str, list[tuple[str, int | None]]]:
    """CoOp JSON -> {split: [(relpath, label)]}."""
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"Split file {path} is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise ValueError(f"Split file {path} must hold a JSON object with keys {SPLIT_NAMES}.")
    out: dict[str, list[tuple[str, int | None]]] = {}
    for name in SPLIT_NAMES:
        if name not in data:
            raise ValueError(f"Split file {path} lacks the key {name!r}; it needs {SPLIT_NAMES}.")
        entries = []
        for entry in data[name]:
            if (
                not isinstance(entry, (list, tuple))
                or len(entry) < 2
                or not isinstance(entry[0], str)
                or isinstance(entry[1], bool)
                or not isinstance(entry[1], int)
            ):
                raise ValueError(
                    f"Split file {path} has entry {entry!r} under {name!r}; expected "
                    f"[relative_path, integer_label, class_name]."
                )
            entries.append((entry[0], entry[1]))
        out[name] = entries
    return out


def torchgeo_list_files(spec: Path) -> dict[str, Path]:
    """The three ``<prefix>-{train,val,test}.txt`` files named by a folder, one of them, or a prefix."""
    if spec.is_dir():
        prefixed = sorted(spec.glob("*-train.txt"))
        preferred = spec / "eurosat-train.txt"
        if preferred.is_file():
            prefix = spec / "eurosat"
        elif len(prefixed) == 1:
            prefix = spec / prefixed[0].name[: -len("-train.txt")]
        else:
            raise FileNotFoundError(
                f"Split folder {spec} holds {len(prefixed)} '*-train.txt' lists; it needs "
                f"eurosat-train.txt, eurosat-val.txt and eurosat-test.txt."
            )
    else:
        match = re.fullmatch(r"(.*)-(train|val|test)\.txt", spec.name)
        prefix = spec.with_name(match.group(1)) if match else spec
    files = {name: prefix.with_name(f"{prefix.name}-{name}.txt") for name in SPLIT_NAMES}
    for file in files.values():
        if not file.is_file():
            raise FileNotFoundError(
                f"Split list {file} does not exist; a torchgeo split needs "
                f"{prefix.name}-train.txt, {prefix.name}-val.txt and {prefix.name}-test.txt "
                f"side by side."
            )
    return files


def read_torchgeo_lists(spec: Path) -> dict[str, list[tuple[str, int | None]]]:
    """torchgeo lists -> {split: [(file_name, None)]} (the lists carry no labels)."""
    return {
        name: [(line.strip(), None) for line in read_text_file(file).splitlines() if line.strip()]
        for name, file in torchgeo_list_files(spec).items()
    }


def read_split_spec(split: str | Path) -> tuple[Path, dict[str, list[tuple[str, int | None]]]]:
    spec = Path(split).expanduser()
    if spec.suffix.lower() == ".json":
        if not spec.is_file():
            raise FileNotFoundError(f"Split file {spec} does not exist.")
        return spec, read_coop_json(spec)
    if spec.exists() or spec.with_name(f"{spec.name}-train.txt").is_file():
        return spec, read_torchgeo_lists(spec)
    raise FileNotFoundError(
        f"split={str(split)!r} is neither 'random' nor an existing split file or folder; "
        f"pass 'random', a CoOp JSON file, or a torchgeo eurosat-{{train,val,test}}.txt "
        f"list, its folder or its prefix."
    )


def check_disjoint(source: Path, entries: dict[str, list[tuple[str, int | None]]]) -> None:
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for rel, _ in entries[name]:
            stem = tile_stem(rel)
            if seen.get(stem, name) != name:
                raise ValueError(
                    f"Split file {source} puts {rel} in both {seen[stem]!r} and {name!r}; "
                    f"train, val and test must be disjoint."
                )
            seen[stem] = name


def file_split(ds: EuroSAT, split: str | Path) -> dict[str, np.ndarray]:
    source, entries = read_split_spec(split)
    check_disjoint(source, entries)
    index_of = {tile_stem(p): i for i, p in enumerate(ds.paths)}
    out: dict[str, np.ndarray] = {}
    for name in SPLIT_NAMES:
        kept: list[int] = []
        for rel, label in entries[name]:
            i = index_of.get(tile_stem(rel))
            if i is None:
                continue  # not in this (possibly per-class-limited) dataset
            if label is not None and label != int(ds.labels[i]):
                raise ValueError(
                    f"Split file {source} labels {rel} as {label}, but its folder "
                    f"{ds.classes[int(ds.labels[i])]} is class {int(ds.labels[i])}."
                )
            kept.append(i)
        out[name] = np.unique(np.asarray(kept, dtype=np.int64))
    if not any(len(v) for v in out.values()):
        raise ValueError(
            f"Split file {source} names none of the {len(ds)} tiles in {ds.root}; "
            f"it must list EuroSAT file names such as {Path(ds.paths[0]).name}."
        )
    return out


def split_indices(
    ds: EuroSAT,
    split: str | Path = "random",
    *,
    split_seed: int = 42,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> dict[str, np.ndarray]:
    """{'train', 'val', 'test'} -> sorted, pairwise disjoint int64 indices into ``ds``.

    ``split='random'`` permutes all samples with ``np.random.default_rng(split_seed)``
    and cuts by ``split_fractions``. Any other value is a split file: a CoOp
    JSON, or a torchgeo list given as its folder, one of its three files, or
    its prefix. File entries are matched to ``ds.paths`` by file name (without
    extension); entries absent from ``ds`` are dropped.
    """
    if isinstance(split, str) and split == "random":
        return random_split(len(ds), split_seed, split_fractions)
    return file_split(ds, split)


# --------------------------------------------------------------------------
# Normalisation and transforms
# --------------------------------------------------------------------------


def normalization(backbone_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that the timm backbone was pretrained with.

    Reads the registered ``PretrainedCfg`` without building the model; a
    name without a tag (``mobilenetv2_100``) resolves to the architecture's
    default pretrained tag, a tagged name (``mobilenetv2_100.ra_in1k``) to
    that tag.
    """
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(backbone_name, allow_unregistered=False)
    except RuntimeError as err:  # timm's "Invalid pretrained tag"
        raise ValueError(
            f"Backbone {backbone_name!r} has an unknown pretrained tag ({err}); use a name "
            f"from timm.list_pretrained()."
        ) from err
    if cfg is None:
        raise ValueError(
            f"Backbone {backbone_name!r} has no pretrained config in timm; use a name from "
            f"timm.list_models() such as 'mobilenetv2_100'."
        )
    mean = tuple(float(m) for m in cfg.mean)
    std = tuple(float(s) for s in cfg.std)
    return mean, std


def check_norm(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(
            f"mean={tuple(mean)!r}, std={tuple(std)!r} is invalid; give 3 values each, "
            f"with every std > 0."
        )


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    crop_scale: float = 0.08,
    dihedral: bool = False,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(train_tf, eval_tf): uint8 tensor [3, H, W] -> normalised float32 [3, S, S].

    Train: RandomResizedCrop (area fraction in [crop_scale, 1]), with ``dihedral`` a random
    quarter turn, horizontal flip, rotation up to 15 degrees and ColorJitter(0.2, 0.2, 0.2).
    Eval: a plain resize. With ``augment=False`` the train transform is the eval transform.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} is invalid; use a positive integer.")
    check_norm(mean, std)
    finish = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    eval_tf = v2.Compose([v2.Resize((image_size, image_size), antialias=True), *finish])
    if not augment:
        return eval_tf, eval_tf
    train_tf = v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), antialias=True),
            *([RandomQuarterTurn()] if dihedral else []),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(15),
            # Jitter runs on uint8, before scaling, as in the reference recipe.
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            *finish,
        ]
    )
    return train_tf, eval_tf


class RandomQuarterTurn(torch.nn.Module):
    """Rotate a ``[..., H, W]`` tensor by 0, 90, 180 or 270 degrees, uniformly (exact: no resampling).

    With a horizontal flip this draws from all eight symmetries of the square: overhead tiles
    have no up.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))


# --------------------------------------------------------------------------
# Torch dataset and loaders
# --------------------------------------------------------------------------


class TileDataset(Dataset[tuple[torch.Tensor, int]]):
    """Samples ``(transform(tile), label)`` for the given indices of an image array."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(images)):
            raise ValueError(
                f"Indices span [{indices.min()}, {indices.max()}] but there are only "
                f"{len(images)} images; every index must be in [0, {len(images) - 1}]."
            )
        self.images = images
        self.labels = labels
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        # Copy: the memmap is read-only and torch wants writable, owned memory.
        tile = torch.from_numpy(np.array(self.images[j], dtype=np.uint8, copy=True))
        return self.transform(tile.permute(2, 0, 1).contiguous()), int(self.labels[j])


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from its torch seed."""
    # torch seeds each worker from the loader's generator; numpy/random are not, so
    # without this every worker would draw the same numpy numbers.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loaders(
    ds: EuroSAT,
    splits: dict[str, np.ndarray],
    *,
    image_size: int,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last_train: bool = False,
    crop_scale: float = 0.08,
    dihedral: bool = False,
) -> dict[str, DataLoader]:
    """One DataLoader per entry of ``splits``; only 'train' shuffles and augments.

    The train order comes from a ``torch.Generator`` seeded with ``seed``. With
    ``num_workers > 0`` the per-worker augmentation seeds derive from it too;
    with ``num_workers == 0`` augmentation draws from the global torch RNG, so
    call ``torch.manual_seed`` for fully repeatable augmentation.
    """
    if "train" not in splits:
        raise ValueError(f"splits has keys {sorted(splits)}; it needs at least 'train'.")
    if len(splits["train"]) == 0:
        raise ValueError("splits['train'] is empty; the training split needs at least one index.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid; use a positive integer.")
    train_tf, eval_tf = build_transforms(image_size, mean, std, augment=augment, crop_scale=crop_scale,
                                         dihedral=dihedral)
    worker_opts: dict = (
        {"persistent_workers": True, "worker_init_fn": seed_worker} if num_workers > 0 else {}
    )
    loaders: dict[str, DataLoader] = {}
    for name, indices in splits.items():
        is_train = name == "train"
        generator = torch.Generator().manual_seed(seed)
        loaders[name] = DataLoader(
            TileDataset(ds.images, ds.labels, indices, train_tf if is_train else eval_tf),
            batch_size=batch_size,
            shuffle=is_train,
            drop_last=drop_last_train and is_train,
            num_workers=num_workers,
            generator=generator,
            pin_memory=torch.cuda.is_available(),
            **worker_opts,
        )
    return loaders
