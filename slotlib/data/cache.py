"""The tile cache: every JPEG decoded a single time into a uint8 ``.npy``, keyed by a fingerprint
of the file list, so later runs memory-map it in about a second instead of decoding 27k files again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import ConfigError

TILE_SIZE = 64   # EuroSAT tiles are 64 x 64 pixels


class DataError(ConfigError):
    """A data file that is missing, unreadable or not what EuroSAT holds: bad input, named in one sentence."""


# Bump when the cache layout changes so stale caches are rebuilt, not misread.
CACHE_FORMAT = 1


def decode_tile(path: str | Path) -> np.ndarray:
    """Decode one tile to uint8 [64, 64, 3]; DataError if it is not a readable 64x64 RGB image.

    There is deliberately no ``convert('RGB')`` or resize: a grey, CMYK or
    wrongly sized file is a data problem that should be seen, not hidden.
    """
    try:
        with open(path, "rb") as fh, Image.open(fh) as img:
            img.load()
            mode, size = img.mode, img.size
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:  # missing, truncated, or not an image at all
        raise DataError(f"tile {path} could not be decoded ({str(err) or type(err).__name__}); replace it with "
                        f"the {TILE_SIZE}x{TILE_SIZE} RGB JPEG of the EuroSAT release, or delete it") from None
    if mode != "RGB" or size != (TILE_SIZE, TILE_SIZE):
        raise DataError(f"tile {path} is a {size[0]}x{size[1]} {mode} image, but EuroSAT RGB tiles are "
                        f"{TILE_SIZE}x{TILE_SIZE} RGB; replace it with the release's tile, or delete it")
    return array


def decode_worker_count() -> int:
    # PIL releases the GIL while decoding, so threads scale with cores; cap to stay polite.
    return max(1, min(8, os.cpu_count() or 1))


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
