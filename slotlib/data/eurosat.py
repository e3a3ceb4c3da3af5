"""EuroSAT RGB: locate or download it, list its tiles, load them (from the cache) as one dataset.

The dataset is the 10-class, 27,000-tile RGB release of EuroSAT in the torchvision layout
``<root>/eurosat/2750/<Class>/<Class>_<n>.jpg`` (64x64 JPEGs).

References
----------
- P. Helber, B. Bischke, A. Dengel, D. Borth. "EuroSAT: A Novel Dataset and
  Deep Learning Benchmark for Land Use and Land Cover Classification."
  IEEE JSTARS 12(7), 2019. https://github.com/phelber/EuroSAT
- torchvision ``datasets.EuroSAT`` (download layout).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import (
    CACHE_FORMAT,
    DataError,
    cache_paths,
    default_cache_dir,
    read_cache,
    write_image_cache,
    write_json_atomically,
)

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


SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


IMAGE_SUFFIXES = (".jpg", ".jpeg")


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
    check_partial(data_root)
    reason = "download=False"
    if download:
        target = Path(data_root).expanduser() / "eurosat"
        existed = target.exists()
        try:
            download_eurosat(data_root)
        # URLError is an OSError; RuntimeError is torchvision's "not found"/md5 failure.
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            if not existed:   # leave nothing behind that the next run could mistake for data
                shutil.rmtree(target, ignore_errors=True)
            reason = f"the download failed ({type(err).__name__}: {err})"
        else:
            found = find_eurosat(data_root)
            if found is not None:
                return found
            check_partial(data_root)
            reason = "the download finished but no class folders appeared"
    looked = ", ".join(str(p) for p in candidate_dirs(data_root))
    raise FileNotFoundError(
        f"EuroSAT class folders ({', '.join(EUROSAT_CLASSES[:2])}, ...) were not found in "
        f"any of [{looked}] and {reason}; set EUROSAT_ROOT or the `data_root` parameter "
        f"to the folder that contains eurosat/2750."
    )


def check_partial(data_root: str | Path) -> None:
    """Refuse a copy that holds some of the class folders but not all, naming the missing ones."""
    for folder in candidate_dirs(data_root):
        present = [name for name in EUROSAT_CLASSES if (folder / name).is_dir()]
        if present:
            missing = [name for name in EUROSAT_CLASSES if name not in present]
            raise DataError(f"{folder} holds {len(present)} of the 10 EuroSAT class folders; missing: "
                            f"{', '.join(missing)}; restore them from the EuroSAT RGB release (or point "
                            f"EUROSAT_ROOT / data_root at a complete copy)")


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
            raise DataError(f"class folder {image_dir / cls} holds no .jpg files; every EuroSAT class "
                            f"folder must contain at least one tile")
        entries.sort(key=lambda e: natural_key(e.name))
        paths.extend(f"{cls}/{e.name}" for e in entries)
        labels.extend([label] * len(entries))
        sizes.extend(e.stat().st_size for e in entries)
    return paths, labels, sizes


def fingerprint_of(paths: Sequence[str], sizes: Sequence[int]) -> str:
    """First 16 hex chars of sha256 over the sorted ``relpath<TAB>size`` lines."""
    lines = sorted(f"{p}\t{s}\n" for p, s in zip(paths, sizes))
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()[:16]


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
    extra = sorted(p.name for p in image_dir.iterdir() if p.is_dir() and p.name not in EUROSAT_CLASSES)
    if extra:   # said once in the run's log, so a user's eleventh class is never dropped silently
        print(f"data: {len(extra)} folder(s) beside EuroSAT's 10 class folders in {image_dir} are not read: "
              f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}", file=sys.stderr)
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
