"""Parameters files and notebooks: base / grid / seeds / notebook -> cells with ids; ``--set``.

A parameters file has these keys::

    base:  {name: value, ...}        # overrides of the defaults, shared by every cell
    grid:  {name: [v1, v2], ...}     # Cartesian product: one cell per combination
    # or a list of such mappings: the cells of each product, one after the other
    # (a baseline and a few one-at-a-time changes without their cross product)
    seeds: [0, 1, 2]                 # optional: every cell repeated with these seeds
    notebook: object_discovery.ipynb # optional: the notebook a grid runs (default train.ipynb)

The notebook decides the parameter set: :class:`Config` for train.ipynb (the classifier),
:class:`DiscoveryConfig` for object_discovery.ipynb (the slot-attention autoencoder).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .classify import FIELDS, Config
from .discover import DiscoveryConfig
from .fields import ConfigError, did_you_mean

# Short names for cell ids; any other parameter appears under its full name.
ALIASES = {"head": "", "lambda_area": "lam", "slot_iters": "it", "dropout": "do", "slots_per_class": "spc",
           "hidden_dim": "hd", "image_size": "px", "output_stride": "os", "backbone": "bb", "drop_path": "dp",
           "stage1_lr": "lr1", "stage2_lr": "lr2", "stage1_epochs": "ep1", "stage2_epochs": "ep2",
           "per_class_limit": "pcl", "crop_scale": "crop", "dihedral": "d4", "label_smoothing": "ls", "weight_decay": "wd", "batch_size": "bs",
           "eval_size": "evalpx", "tta": "tta", "stage2_batchnorm": "bn",
           "background": "bg", "num_slots": "slots"}


TOP_KEYS = ("base", "grid", "seeds", "notebook")


# Notebooks a grid can run, by file name in notebooks/, and the parameters each one takes.
NOTEBOOK_CONFIGS: dict[str, type] = {"train.ipynb": Config, "object_discovery.ipynb": DiscoveryConfig}


DEFAULT_NOTEBOOK = "train.ipynb"


def config_names(config_cls: type) -> dict[str, Any]:
    """The parameter names a config class takes (flat, in declaration order)."""
    return dict(FIELDS) if config_cls is Config else config_cls.fields()


@dataclass(frozen=True)
class Cell:
    """One run of a grid: its id, the grid values that define it, and its resolved config."""

    id: str
    axes: dict[str, Any]
    config: Config | DiscoveryConfig


def grid_products(grid: Any) -> list:
    """A parameters file's ``grid:`` as a list of Cartesian products: a mapping is one, a list is several."""
    return grid if isinstance(grid, list) else [grid]


@dataclass(frozen=True)
class ParamsFile:
    path: str
    base: dict[str, Any]
    grid: dict[str, list] | list[dict[str, list]]   # one product, or several one after the other
    seeds: list[int] | None
    notebook: str = DEFAULT_NOTEBOOK   # file name in notebooks/; it decides which parameters are valid

    @property
    def config_cls(self) -> type:
        return NOTEBOOK_CONFIGS[self.notebook]

    @property
    def base_config(self) -> Config | DiscoveryConfig:
        return self.config_cls.from_params(self.base, where=f"{self.path} base")

    @property
    def products(self) -> list[dict[str, list]]:
        """The grid as a list of Cartesian products (one for a mapping)."""
        return grid_products(self.grid)

    def cells(self) -> list[Cell]:
        """The Cartesian product of the grid (of each product in turn, for a list) times the seeds, in file order."""
        combos = [dict(zip(g, combo)) for g in self.products
                  for combo in (list(itertools.product(*g.values())) or [()])]
        cells = []
        for combo in combos:
            for seed in (self.seeds if self.seeds is not None else [None]):
                axes = dict(combo)
                if seed is not None:
                    axes["seed"] = seed
                cfg = self.config_cls.from_params({**self.base, **axes}, where=f"{self.path} grid cell {axes}")
                cells.append(Cell(id=cell_id(axes, cfg), axes=axes, config=cfg))
        ids = [c.id for c in cells]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup:
            raise ConfigError(f"grid in {self.path} gives cell '{dup}' twice; list each value once")
        return cells


def cell_id(axes: Mapping[str, Any], cfg: Config | DiscoveryConfig) -> str:
    """Readable and deterministic: the grid values, then a hash of every resolved parameter.

    Only letters, digits, '.', '_' and '-' so ids are safe folder names everywhere.
    """
    parts = [f"{ALIASES.get(k, k)}{_id_value(v)}" for k, v in axes.items()]
    return f"{'_'.join(parts) or 'base'}-{cfg.digest()}"


def _id_value(v: Any) -> str:
    if isinstance(v, bool):
        text = "T" if v else "F"
    elif v is None:
        text = "none"
    elif isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, str):
        text = Path(v).name  # a split file or weights file: its name is enough, the hash has the rest
    else:
        text = str(v)
    return re.sub(r"[^A-Za-z0-9.]+", "", text)


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(f"gives the key '{key}' twice, on lines {seen[key]} and {line}; keep one "
                                    f"(YAML would silently keep the last)")
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def load_params_file(path: str | os.PathLike) -> ParamsFile:
    """Read and validate a parameters file; every cell is resolved so any bad value fails now."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"parameters file '{path}' does not exist; pass the path of a YAML file such as "
                          f"params/demo.yaml") from None
    except IsADirectoryError:
        raise ConfigError(f"parameters file '{path}' is a folder; pass the path of a YAML file in it, such as "
                          f"params/demo.yaml") from None
    except PermissionError:
        raise ConfigError(f"parameters file '{path}' cannot be read (permission denied); make it readable or "
                          f"copy it somewhere readable") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"parameters file '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8 "
                          f"YAML") from None
    except _DuplicateKey as err:
        raise ConfigError(f"parameters file '{path}' {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"parameters file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not raw and raw != []:   # None (no YAML at all) or {}
        raise ConfigError(f"parameters file '{path}' is empty; write at least 'base: {{}}' to run every default "
                          f"(the reference recipe: 100 epochs at 224 px), or see params/demo.yaml")
    return parse_params(raw, path)


MAX_CELLS = 5000   # cells one params file may span; each is resolved and checked before anything runs


def parse_params(raw: Any, path: str = "<params>") -> ParamsFile:
    if not isinstance(raw, dict):
        raise ConfigError(f"parameters file '{path}' must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}' in {path}; valid keys: {', '.join(TOP_KEYS)} "
                          f"(parameters go under 'base' or 'grid')")
    base = raw.get("base") or {}
    grid = raw.get("grid") or {}
    seeds = raw.get("seeds")
    notebook = raw.get("notebook", DEFAULT_NOTEBOOK)
    if notebook not in NOTEBOOK_CONFIGS:
        raise ConfigError(f"'notebook' in {path} must be one of {', '.join(NOTEBOOK_CONFIGS)} (a file in notebooks/), "
                          f"got {notebook!r}")
    names = config_names(NOTEBOOK_CONFIGS[notebook])
    if not isinstance(base, dict):
        raise ConfigError(f"'base' in {path} must be a mapping of parameter names to values")
    products = grid_products(grid)
    if not products or not all(isinstance(g, dict) for g in products):
        raise ConfigError(f"'grid' in {path} must be a mapping of parameter names to lists of values, or a "
                          f"non-empty list of such mappings")
    for g in products:
        for name, values in g.items():
            if name not in names:
                raise ConfigError(f"unknown parameter '{name}' in {path} grid{did_you_mean(name, names)}; "
                                  f"valid names: {', '.join(names)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid axis '{name}' in {path} must be a non-empty list of values, got {values!r}")
            if name == "seed":
                raise ConfigError(f"grid axis 'seed' in {path}: use the top-level 'seeds' list instead")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                               for s in seeds):
            raise ConfigError(f"'seeds' in {path} must be a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"'seeds' in {path} lists a seed twice: {seeds!r}")
    sizes = [math.prod(len(v) for v in g.values()) * len(seeds or [None]) for g in products]
    if sum(sizes) > MAX_CELLS:   # refused before any cell is built: 10^6 cells took minutes and gigabytes
        shape = " + ".join(" x ".join(str(len(v)) for v in g.values()) or "1" for g in products)
        raise ConfigError(f"the grid in {path} has {sum(sizes):,} cells ({shape}"
                          f"{f' x {len(seeds)} seeds' if seeds else ''}), more than the limit of {MAX_CELLS:,}; "
                          f"split it into several params files")
    copied = [{k: list(v) for k, v in g.items()} for g in products]
    pf = ParamsFile(path=path, base=dict(base), grid=copied if isinstance(grid, list) else copied[0], seeds=seeds,
                    notebook=notebook)
    pf.base_config  # validates the base alone, so its errors name the base
    pf.cells()
    return pf


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` from the command line; values are read as YAML (``0.1``, ``true``, ``null``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' must look like key=value, e.g. --set slot_iters=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


NOTEBOOK_EXTRAS = ("out_dir",)


_IPYTHON_NAMES = {"In", "Out"}


def from_namespace(namespace: Mapping[str, Any], extras: tuple[str, ...] = NOTEBOOK_EXTRAS,
                   config_cls: type = Config) -> tuple[Any, dict[str, Any]]:
    """A notebook's globals after its ``parameters`` cell (and papermill's injected cell) -> config.

    Every plain value in the namespace must be a parameter name of ``config_cls`` (:class:`Config`
    for train.ipynb, :class:`DiscoveryConfig` for object_discovery.ipynb) or one of ``extras``:
    a name papermill injects that nothing reads (a typo such as ``slot_iter``) is rejected.
    """
    names = config_names(config_cls)
    values = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in _IPYTHON_NAMES
              and not callable(v) and not isinstance(v, types.ModuleType)}
    unknown = sorted(set(values) - set(names) - set(extras))
    if unknown:
        raise ConfigError(f"unknown parameter '{unknown[0]}' in the notebook{did_you_mean(unknown[0], names)}; "
                          f"valid names: {', '.join([*names, *extras])}")
    config = config_cls.from_params({k: v for k, v in values.items() if k in names})
    return config, {k: values[k] for k in extras if k in values}
