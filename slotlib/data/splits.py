"""Train/val/test splits: a seeded random 70/15/15 split, the fixed CoOp JSON split
(``split_zhou_EuroSAT.json``) or the torchgeo text lists (``eurosat-{train,val,test}.txt``),
by path or as ``torchgeo``: Neumann et al.'s split, the one published EuroSAT figures compare on.

References
----------
- K. Zhou, J. Yang, C. C. Loy, Z. Liu. "Learning to Prompt for
  Vision-Language Models" (CoOp). IJCV 2022 -- source of the JSON split.
- M. Neumann, A. S. Pinto, X. Zhai, N. Houlsby. "In-domain representation
  learning for remote sensing." arXiv:1911.06721, 2019 -- the train/val/test
  lists that torchgeo uses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .eurosat import SPLIT_NAMES, EuroSAT


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
        f"split={str(split)!r} is neither 'random', 'torchgeo' nor an existing split file or "
        f"folder; pass 'random', 'torchgeo', a CoOp JSON file, or a torchgeo eurosat-{{train,val,test}}.txt "
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


# torchgeo's host for the Neumann et al. lists (torchgeo PR #2432; the Google Cloud copy is gone).
TORCHGEO_SPLIT_URL = (
    "https://hf.co/datasets/torchgeo/eurosat/resolve/"
    "1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/eurosat-{name}.txt"
)


def torchgeo_split_folder(ds: EuroSAT, download: bool = True) -> Path:
    """The folder of the Neumann et al. (torchgeo) lists for ``split: torchgeo``.

    Looked for as ``<eurosat>/splits/torchgeo`` (``<eurosat>`` holds ``2750``), then next to
    ``2750``; when absent they are downloaded the torchgeo way into the first.
    """
    home = ds.root.parent / "splits" / "torchgeo"
    for folder in (home, ds.root.parent, ds.root):
        if all((folder / f"eurosat-{name}.txt").is_file() for name in SPLIT_NAMES):
            return folder
    reason = "download=False"
    if download:
        from torchvision.datasets.utils import download_url

        try:
            for name in SPLIT_NAMES:
                download_url(TORCHGEO_SPLIT_URL.format(name=name), str(home), f"eurosat-{name}.txt")
            return home
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            for name in SPLIT_NAMES:
                (home / f"eurosat-{name}.txt").unlink(missing_ok=True)
            reason = f"downloading them from {TORCHGEO_SPLIT_URL.format(name='train')} failed ({err})"
    raise FileNotFoundError(
        f"split=torchgeo needs eurosat-train.txt, eurosat-val.txt and eurosat-test.txt in {home} "
        f"and {reason}; put torchgeo's lists there, or pass their folder as `split`."
    )


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
    its prefix. ``split='torchgeo'`` is Neumann et al.'s split (torchgeo's lists), found
    beside the data or downloaded (``torchgeo_split_folder``). File entries are matched to
    ``ds.paths`` by file name (without extension); entries absent from ``ds`` are dropped.
    """
    if isinstance(split, str) and split == "random":
        return random_split(len(ds), split_seed, split_fractions)
    if isinstance(split, str) and split == "torchgeo":
        return file_split(ds, torchgeo_split_folder(ds))
    return file_split(ds, split)
