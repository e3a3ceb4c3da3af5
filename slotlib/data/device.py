"""Tiles on the training device, augmented there a whole batch at a time (``pipeline: fast``).

EuroSAT is small: 27,000 x 64 x 64 x 3 bytes is 330 MB, so the uint8 cache goes to the device
once. Each batch is indexed there and augmented there, per sample, with the training transform of
:func:`slotlib.data.transforms.build_transforms` (RandomResizedCrop, horizontal flip, rotation up to 15
degrees, ColorJitter 0.2/0.2/0.2): crop, flip and rotation are composed into one affine map per
sample and applied as one bilinear resample straight from the 64 px tile to ``image_size``; the
colour jitter is elementwise. No per-tile Python, no worker processes, no host-device copy and no
host sync in the loop. The idea is KellerJordan/cifar10-airbench's (the dataset lives on the GPU).

The same code runs on the CPU, where it is also faster than per-tile transforms.

Shape letters: B batch, M tiles, H/W tile height/width (64), S output size (``image_size``),
T crop attempts.

Where the result differs from the per-tile transforms, on purpose (tests/test_device_data.py
checks that the distributions match):
  - one bilinear resample instead of a bilinear resize followed by a nearest-neighbour rotation;
  - colour arithmetic in float, not rounded to uint8 after each jitter op;
  - a crop larger than ``image_size`` is antialiased by first shrinking the whole tile.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# torchvision.transforms.v2 defaults, as used by data.build_transforms
CROP_SCALE = (0.08, 1.0)


CROP_RATIO = (3 / 4, 4 / 3)


CROP_ATTEMPTS = 10


ROTATION_DEG = 15.0


JITTER = 0.2                           # brightness, contrast and saturation factors in [0.8, 1.2]


GREY = (0.2989, 0.587, 0.114)          # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, device=device)


def crop_boxes(b: int, h: int, w: int, gen: torch.Generator, device,
               scale: tuple[float, float] = CROP_SCALE) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for B samples at once: ``[B,4]`` (top, left, height, width).

    Up to ten attempts per sample, the first one that fits wins; otherwise the centre crop of
    the clamped ratio (the whole tile for square tiles), exactly as torchvision does.
    """
    t = CROP_ATTEMPTS
    area = h * w * _uniform((b, t), *scale, gen, device)                          # [B,T]
    ratio = torch.exp(_uniform((b, t), math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), gen, device))  # [B,T]
    cw = torch.round(torch.sqrt(area * ratio))                                         # [B,T]
    ch = torch.round(torch.sqrt(area / ratio))                                         # [B,T]
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)                                 # [B,T]
    first = fits.to(torch.uint8).argmax(1, keepdim=True)                              # [B,1] first fitting attempt
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)            # [B]
    in_ratio = w / h
    if in_ratio < CROP_RATIO[0]:
        fw, fh = w, round(w / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fw, fh = round(h * CROP_RATIO[1]), h
    else:
        fw, fh = w, h
    ok = fits.any(1)                                                                   # [B]
    cw = torch.where(ok, cw, torch.full_like(cw, fw))
    ch = torch.where(ok, ch, torch.full_like(ch, fh))
    # randint(0, h - ch + 1) for the top edge; the fallback is centred
    top = torch.where(ok, torch.floor(torch.rand(b, generator=gen, device=device) * (h - ch + 1)),
                      torch.div(h - ch, 2, rounding_mode="floor"))
    left = torch.where(ok, torch.floor(torch.rand(b, generator=gen, device=device) * (w - cw + 1)),
                       torch.div(w - cw, 2, rounding_mode="floor"))
    return torch.stack([top, left, ch, cw], 1)                                         # [B,4]


def _base_grid(s: int, device, dtype) -> torch.Tensor:
    """Output pixel centres in [-1, 1] (align_corners=False): ``[S,S,2]`` as (x, y)."""
    c = (torch.arange(s, device=device, dtype=dtype) * 2 + 1) / s - 1                  # [S]
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], -1)                                                     # [S,S,2]


def geometric(tiles: torch.Tensor, size: int, gen: torch.Generator, *, crop: bool = True, flip: bool = True,
              rotation: float = ROTATION_DEG, crop_scale: float = CROP_SCALE[0],
              dihedral: bool = False) -> torch.Tensor:
    """Random resized crop, horizontal flip and rotation of float tiles ``[B,3,H,W]`` -> ``[B,3,S,S]``.

    Output pixel p is read, in the resized crop, at ``flip(rotate(p))``; pixels that the rotation
    brings in from outside the crop are 0, as torchvision's RandomRotation fills them.
    ``crop_scale``: the smallest crop area fraction. ``dihedral`` adds a random quarter turn to
    the rotation (exact on the square crop; with the flip, all eight symmetries of the square).
    """
    b, _, h, w = tiles.shape
    device, dtype = tiles.device, tiles.dtype
    if crop:
        top, left, ch, cw = crop_boxes(b, h, w, gen, device, (crop_scale, 1.0)).to(dtype).unbind(1)  # [B] each
    else:
        top = left = torch.zeros(b, device=device, dtype=dtype)
        ch, cw = torch.full((b,), float(h), device=device, dtype=dtype), torch.full((b,), float(w), device=device, dtype=dtype)
    angle = _uniform((b,), -rotation, rotation, gen, device).to(dtype) * (math.pi / 180)  # [B]
    if dihedral:
        angle = angle + torch.randint(4, (b,), generator=gen, device=device).to(dtype) * (math.pi / 2)
    mirror = torch.where(torch.rand(b, generator=gen, device=device) < 0.5, -1.0, 1.0).to(dtype) if flip \
        else torch.ones(b, device=device, dtype=dtype)                                 # [B] -1 flips
    cos, sin = angle.cos().view(b, 1, 1), angle.sin().view(b, 1, 1)                     # [B,1,1]
    m = mirror.view(b, 1, 1)
    base = _base_grid(size, device, dtype)                                              # [S,S,2]
    bx, by = base[..., 0], base[..., 1]                                                 # [S,S] each
    qx = m * (cos * bx - sin * by)                                                      # [B,S,S] rotated, then flipped
    qy = sin * bx + cos * by                                                            # [B,S,S]
    inside = ((qx.abs() <= 1) & (qy.abs() <= 1)).unsqueeze(1)                           # [B,1,S,S] rotation fill
    # crop coordinates [-1,1] -> tile coordinates [-1,1]: x_tile = (left + (q_x + 1) / 2 * cw) * 2 / W - 1
    sx, sy = (cw / w).view(b, 1, 1), (ch / h).view(b, 1, 1)                            # [B,1,1]
    tx, ty = ((2 * left + cw) / w - 1).view(b, 1, 1), ((2 * top + ch) / h - 1).view(b, 1, 1)
    grid = torch.stack([qx * sx + tx, qy * sy + ty], -1)                                # [B,S,S,2] in the tile
    if size < min(h, w):  # shrink first so the bilinear read does not alias (RandomResizedCrop antialiases)
        tiles = F.interpolate(tiles, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = F.grid_sample(tiles, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.mul_(inside)                                                                # [B,3,S,S]


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``[B,3,S,S]`` -> ``[B,1,S,S]``."""
    r, g, b = x.unbind(1)
    return (GREY[0] * r + GREY[1] * g + GREY[2] * b).unsqueeze(1)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = JITTER) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation = strength) on ``[B,3,S,S]`` in [0, 1].

    As torchvision: each factor uniform in [1 - strength, 1 + strength], the three ops in a random
    order per sample, clamped to [0, 1] after each.
    """
    b, device = x.shape[0], x.device
    f = _uniform((3, b), 1 - strength, 1 + strength, gen, device).to(x.dtype).view(3, b, 1, 1, 1)  # [3,B,1,1,1]
    order = torch.rand(b, 3, generator=gen, device=device).argsort(1)                 # [B,3] random op order
    # Each op is x <- a*x + c*mean(grey(x)) + s*grey(x) with per-sample a, c, s:
    #   brightness a=f; contrast a=f, c=1-f; saturation a=f, s=1-f.
    zero = torch.zeros_like(f[0])
    for step in range(3):
        op = order[:, step].view(b, 1, 1, 1)                                           # [B,1,1,1] 0, 1 or 2
        a = torch.where(op == 0, f[0], torch.where(op == 1, f[1], f[2]))               # [B,1,1,1]
        c = torch.where(op == 1, 1 - f[1], zero)
        s = torch.where(op == 2, 1 - f[2], zero)
        g = grey(x)                                                                    # [B,1,S,S]
        x = (x * a).add_(g * s).add_(c * g.mean((2, 3), keepdim=True)).clamp_(0, 1)   # [B,3,S,S]
    return x


def resize(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation transform's resize of float tiles in [0, 255], rounded to whole levels as v2.Resize on uint8."""
    if tiles.shape[-1] == size and tiles.shape[-2] == size:
        return tiles
    out = F.interpolate(tiles, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255)


class DeviceLoader:
    """Batches ``(images [B,3,S,S] float32, labels [B])`` from tiles already on the device.

    A drop-in for the DataLoader of :func:`slotlib.data.transforms.make_loaders`: ``len()`` is the number of
    batches and ``generator`` (on the tiles' device) drives the shuffle and every augmentation
    draw, so re-seeding it repeats an epoch.
    """

    def __init__(self, tiles: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, *, image_size: int,
                 batch_size: int, mean: Sequence[float], std: Sequence[float], train: bool, augment: bool,
                 seed: int = 0, drop_last: bool = False, channels_last: bool = False,
                 crop_scale: float = CROP_SCALE[0], dihedral: bool = False) -> None:
        self.tiles, self.labels = tiles, labels                                        # [M,3,H,W] uint8, [M]
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=tiles.device)
        self.image_size, self.batch_size = image_size, batch_size
        self.shuffle, self.augment, self.drop_last = train, train and augment, drop_last and train
        self.mean = torch.tensor(mean, device=tiles.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=tiles.device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last
        self.crop_scale, self.dihedral = crop_scale, dihedral
        self.generator = torch.Generator(device=tiles.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Inputs for tile indices ``[B]``: the training augmentation or the evaluation resize, normalised."""
        x = self.tiles[index].float()                                                  # [B,3,H,W] in [0,255]
        if self.augment:
            x = geometric(x, self.image_size, self.generator, crop_scale=self.crop_scale,
                          dihedral=self.dihedral)                                      # [B,3,S,S]
            x = colour_jitter(x / 255, self.generator) * 255
        else:
            x = resize(x, self.image_size)                                             # [B,3,S,S]
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.indices), self.batch_size
        order = (self.indices[torch.randperm(n, generator=self.generator, device=self.indices.device)]
                 if self.shuffle else self.indices)                                    # [M]
        for start in range(0, len(self) * bs, bs):
            index = order[start:start + bs]                                            # [B]
            yield self.batch(index), self.labels[index]


def tiles_on(images: np.ndarray, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """The uint8 cache ``[M,H,W,3]`` (a read-only memmap) as ``[M,3,H,W]`` on ``device``, copied once, in chunks."""
    m, h, w, c = images.shape
    tiles = torch.empty((m, c, h, w), dtype=torch.uint8, device=device)              # [M,3,H,W]
    for start in range(0, m, chunk):
        part = torch.from_numpy(np.array(images[start:start + chunk], dtype=np.uint8))  # [m,H,W,3] owned copy
        tiles[start:start + chunk] = part.to(device).permute(0, 3, 1, 2)
    return tiles


def make_device_loaders(ds, splits: dict[str, np.ndarray], *, image_size: int, batch_size: int,
                        mean: Sequence[float], std: Sequence[float], augment: bool = True, seed: int = 0,
                        device: torch.device | str = "cpu", channels_last: bool = False,
                        drop_last_train: bool = False, crop_scale: float = CROP_SCALE[0],
                        dihedral: bool = False, eval_size: int | None = None) -> dict[str, DeviceLoader]:
    """One DeviceLoader per split (only 'train' shuffles and augments), sharing one copy of the tiles;
    the other splits are resized to ``eval_size`` (default ``image_size``)."""
    if "train" not in splits or len(splits["train"]) == 0:
        raise ValueError("splits needs a non-empty 'train' entry")
    device = torch.device(device)
    tiles = tiles_on(ds.images, device)
    labels = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64), device=device)
    eval_size = image_size if eval_size is None else eval_size
    return {name: DeviceLoader(tiles, labels, idx, image_size=image_size if name == "train" else eval_size,
                               batch_size=batch_size, mean=mean,
                               std=std, train=name == "train", augment=augment, seed=seed,
                               drop_last=drop_last_train, channels_last=channels_last,
                               crop_scale=crop_scale, dihedral=dihedral)
            for name, idx in splits.items()}
