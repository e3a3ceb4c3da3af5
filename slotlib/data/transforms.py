"""Per-tile CPU transforms and DataLoaders (``pipeline: loader``), and the backbone's normalisation.

References: torchvision ``transforms.v2`` (augmentations); timm ``PretrainedCfg`` (mean/std).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .eurosat import EuroSAT


def normalization(backbone_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that the timm backbone was pretrained with.

    Reads the registered ``PretrainedCfg`` without building the model; a
    name without a tag (``mobilenetv2_100``) resolves to the architecture's
    default pretrained tag, a tagged name (``mobilenetv2_100.ra_in1k``) to
    that tag.
    """
    from timm.models import get_pretrained_cfg

    from ..classify import vit_variants  # noqa: F401  (registers the slotvit_* backbones' configs)

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
    eval_size: int | None = None,
) -> dict[str, DataLoader]:
    """One DataLoader per entry of ``splits``; only 'train' shuffles and augments; the others are
    resized to ``eval_size`` (default ``image_size``).

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
    if eval_size is not None and eval_size != image_size:
        _, eval_tf = build_transforms(eval_size, mean, std, augment=False)
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


def test_time_views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a batch ``[B,3,S,S]`` that test-time augmentation averages over: ``'none'`` the batch,
    ``'flip'`` it and its horizontal mirror, ``'dihedral'`` the 8 symmetries of the square (4 quarter turns,
    each also mirrored)."""
    if tta == "none":
        return [images]
    if tta == "flip":
        return [images, images.flip(-1)]
    if tta == "dihedral":
        turns = [images.rot90(k, dims=(-2, -1)) for k in range(4)]
        return turns + [t.flip(-1) for t in turns]
    raise ValueError(f"tta={tta!r} is invalid; use 'none', 'flip' or 'dihedral'")
