"""Synthetic multi-object scenes with per-pixel instance masks, for unsupervised object discovery.

Each scene holds 2-5 flat-coloured shapes (square, circle, triangle) of varied size, colour and
position on a slightly noisy grey background (or a plain black one). Objects are painted in
order, so later ones occlude earlier ones; the instance mask records what is visible:
0 = background, 1..k = objects in painting order.

Shape letters: N scenes, H height, W width (H = W = ``size``), K object places (5).

Deterministic: scene i of a dataset depends only on ``(seed, i)`` (its own numpy Generator
seeded with ``[seed, i]``), so the first 500 scenes of a held-out set are the same whatever
its length. Sizes 32 and 64 are supported; shape sizes are fractions of the image size, so a
64 px scene is the 32 px scene drawn at twice the resolution (up to the pixel noise).

Every object keeps at least ``MIN_VISIBLE`` of its pixels visible (a scene that breaks this is
redrawn from the same generator), so a scene's visible object count is its drawn count.

References:
    Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020.
    Kabra et al., "Multi-Object Datasets" (Tetrominoes, Multi-dSprites), DeepMind 2019:
        https://github.com/deepmind/multi_object_datasets
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZES = (32, 64)


BACKGROUNDS = ("grey", "black")


SHAPES = ("square", "circle", "triangle")


MIN_OBJECTS, MAX_OBJECTS = 2, 5


RADIUS = (0.11, 0.20)      # shape half-extent as a fraction of the image size


MIN_VISIBLE = 0.25         # fraction of an object's own pixels that must stay visible


GREY, GREY_NOISE = 0.5, 0.03


CHUNK = 1000               # scenes composed at once


HUE_BINS = 12              # objects of one scene take distinct hue bins, so neighbours differ in colour


@dataclass(frozen=True)
class Scenes:
    """``images`` uint8 [N,H,W,3]; ``masks`` uint8 [N,H,W], 0 = background, 1..k = visible objects."""

    images: np.ndarray
    masks: np.ndarray
    num_objects: np.ndarray   # [N] objects drawn (all visible)
    objects: np.ndarray       # [N,K,8] rows (present, shape, cx, cy, r, R, G, B), coordinates in [0,1]

    def __len__(self) -> int:
        return len(self.images)


def _check(size: int, background: str) -> None:
    from ..config import ConfigError  # one error type for every bad parameter

    if size not in SIZES:
        raise ConfigError(f"parameter 'image_size' must be one of {', '.join(map(str, SIZES))}, got {size!r}")
    if background not in BACKGROUNDS:
        raise ConfigError(f"parameter 'background' must be one of {', '.join(BACKGROUNDS)}, got {background!r}")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[...] each in [0,1] -> [...,3]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in
                      [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], 0)  # [6,...,3]
    return np.take_along_axis(table, i[None, ..., None], 0)[0]                                  # [...,3]


def _draw_objects(rng: np.random.Generator) -> np.ndarray:
    """One scene's objects as rows [present, shape, cx, cy, r, R, G, B], K rows (coordinates in [0,1])."""
    k = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)
    rows = np.zeros((MAX_OBJECTS, 8))
    hues = (rng.permutation(HUE_BINS)[:k] + rng.uniform(0.2, 0.8, k)) / HUE_BINS
    rows[:k, 0] = 1
    rows[:k, 1] = rng.integers(0, len(SHAPES), k)
    r = rng.uniform(*RADIUS, k)
    rows[:k, 2] = rng.uniform(r, 1 - r)                    # the shape lies inside the image
    rows[:k, 3] = rng.uniform(r, 1 - r)
    rows[:k, 4] = r
    rows[:k, 5:] = _hsv_to_rgb(hues, rng.uniform(0.6, 1.0, k), rng.uniform(0.65, 1.0, k))
    return rows


def _shape_masks(objects: np.ndarray, size: int) -> np.ndarray:
    """objects [N,K,8] -> each object's own pixels, before occlusion, bool [N,K,H,W]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size                                   # pixel centres in [0,1]
    y, x = c[:, None], c[None, :]                                        # [H,1], [1,W]
    shape, cx, cy, r = (objects[..., i, None, None].astype(np.float32) for i in (1, 2, 3, 4))   # [N,K,1,1] each
    dx, dy = x - cx, y - cy                                              # [N,K,H,W]
    square = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)        # same area scale as the circle
    circle = dx ** 2 + dy ** 2 <= r ** 2
    triangle = (dy <= r) & (np.abs(dx) <= (dy + r) * 0.6)               # apex up, base 1.2 r wide each side
    own = np.where(shape == 0, square, np.where(shape == 1, circle, triangle))
    return own & (objects[..., 0, None, None] > 0)                       # [N,K,H,W] absent places are empty


def _compose(objects: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """objects [N,K,8] -> colour [N,H,W,3] float, instance mask [N,H,W], ok [N] (everything visible enough)."""
    own = _shape_masks(objects, size)                                    # [N,K,H,W]
    n = len(objects)
    masks = np.zeros((n, size, size), np.uint8)                          # [N,H,W]
    for k in range(MAX_OBJECTS):                                         # painting order: later objects on top
        masks[own[:, k]] = k + 1
    visible = masks[:, None] == np.arange(1, MAX_OBJECTS + 1)[None, :, None, None]   # [N,K,H,W]
    own_px, vis_px = own.sum((2, 3)), visible.sum((2, 3))                # [N,K]
    ok = ((vis_px >= MIN_VISIBLE * own_px) & ((own_px > 0) | (objects[..., 0] == 0))).all(1)  # [N]
    palette = np.concatenate([np.zeros((n, 1, 3)), objects[..., 5:]], 1)  # [N,1+K,3] index 0 = background
    colour = np.take_along_axis(palette, masks.reshape(n, -1, 1).astype(int), 1).reshape(n, size, size, 3)
    return colour, masks, ok


def make_scenes(n: int, *, size: int = 32, background: str = "grey", seed: int = 0, start: int = 0) -> Scenes:
    """Scenes ``start .. start+n-1`` of the dataset ``seed``; scene i depends only on (seed, i)."""
    _check(size, background)
    if n > CHUNK:  # bounded memory: the per-object masks are [N,K,H,W]
        parts = [make_scenes(min(CHUNK, n - i), size=size, background=background, seed=seed, start=start + i)
                 for i in range(0, n, CHUNK)]
        return Scenes(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("images", "masks", "num_objects", "objects")))
    rngs = [np.random.default_rng([seed, i]) for i in range(start, start + n)]
    objects = np.stack([_draw_objects(rng) for rng in rngs])              # [N,K,8]
    colour, masks, ok = _compose(objects, size)
    while not ok.all():                                                  # redraw the few over-occluded scenes
        bad = np.flatnonzero(~ok)
        objects[bad] = np.stack([_draw_objects(rngs[i]) for i in bad])
        colour[bad], masks[bad], ok[bad] = _compose(objects[bad], size)
    if background == "grey":
        # The noise comes from the scene's own generator, after its objects, so it is deterministic too.
        noise = np.stack([rng.normal(0.0, GREY_NOISE, (size, size, 1)) for rng in rngs])  # [N,H,W,1]
        colour = np.where(masks[..., None] == 0, GREY + noise, colour)  # [N,H,W,3] noise on the background only
    images = np.clip(np.round(colour * 255), 0, 255).astype(np.uint8)   # [N,H,W,3]
    return Scenes(images=images, masks=masks, num_objects=objects[..., 0].sum(1).astype(int), objects=objects)
