"""Synthetic multi-object scenes with per-pixel instance masks, for unsupervised object discovery.

Each scene holds 2-5 flat-coloured shapes of varied size, colour and position on a background:
slightly noisy grey, plain black, or one colour per scene. Objects are painted in order, so later
ones occlude earlier ones; the instance mask records what is visible: 0 = background, 1..k =
objects in painting order. Two kinds (``kind``):

- ``shapes``: square, circle and triangle, upright;
- ``dsprites``: Multi-dSprites-style, dSprites' square, ellipse and heart at a random scale (0.5 to
  1 of the largest, as dSprites' six scales), rotation and position, each of a random colour; with
  ``background: colour`` it is the ``colored_on_colored`` variant of Kabra et al.'s Multi-dSprites.

Shape letters: N scenes, H height, W width (H = W = ``size``), K object places (5).

Deterministic: scene i of a dataset depends only on ``(seed, i)`` (its own numpy Generator
seeded with ``[seed, i]``), so the first 500 scenes of a held-out set are the same whatever
its length. Sizes 32 and 64 are supported; shape sizes are fractions of the image size, so a
64 px scene is the 32 px scene drawn at twice the resolution (up to the pixel noise).

The ``shapes`` scenes of a seed are what they were before ``dsprites`` existed (a test pins them).

Every object keeps at least ``MIN_VISIBLE`` of its pixels visible (a scene that breaks this is
redrawn from the same generator), so a scene's visible object count is its drawn count.

References:
    Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020.
    Kabra et al., "Multi-Object Datasets" (Tetrominoes, Multi-dSprites), DeepMind 2019:
        https://github.com/deepmind/multi_object_datasets
    Matthey et al., "dSprites: Disentanglement testing Sprites dataset", DeepMind 2017:
        https://github.com/deepmind/dsprites-dataset
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZES = (32, 64)


BACKGROUNDS = ("grey", "black", "colour")


KINDS = ("shapes", "dsprites")


ALL_SHAPES = ("square", "circle", "triangle", "ellipse", "heart")   # an object row's shape index
SHAPES = ALL_SHAPES[:3]                                                # kind 'shapes'
DSPRITES = (0, 3, 4)                                                   # kind 'dsprites': square, ellipse, heart
DSPRITES_RADIUS = 0.2      # the largest dSprite's half-extent, a fraction of the image; scales 0.5-1 of it


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
    objects: np.ndarray       # [N,K,9] rows (present, shape, cx, cy, r, R, G, B, angle), coordinates in [0,1]

    def __len__(self) -> int:
        return len(self.images)


def _check(size: int, background: str, kind: str = "shapes") -> None:
    from ..config import ConfigError  # one error type for every bad parameter

    if kind not in KINDS:
        raise ConfigError(f"parameter 'scenes' must be one of {', '.join(KINDS)}, got {kind!r}")
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
    """One ``shapes`` scene's objects as rows [present, shape, cx, cy, r, R, G, B, angle], K rows (coordinates
    in [0,1], angle 0)."""
    k = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)
    rows = np.zeros((MAX_OBJECTS, 9))
    hues = (rng.permutation(HUE_BINS)[:k] + rng.uniform(0.2, 0.8, k)) / HUE_BINS
    rows[:k, 0] = 1
    rows[:k, 1] = rng.integers(0, len(SHAPES), k)
    r = rng.uniform(*RADIUS, k)
    rows[:k, 2] = rng.uniform(r, 1 - r)                    # the shape lies inside the image
    rows[:k, 3] = rng.uniform(r, 1 - r)
    rows[:k, 4] = r
    rows[:k, 5:8] = _hsv_to_rgb(hues, rng.uniform(0.6, 1.0, k), rng.uniform(0.65, 1.0, k))
    return rows


def _draw_dsprites(rng: np.random.Generator) -> np.ndarray:
    """One ``dsprites`` scene's objects: dSprites' shapes at a random scale, rotation, position and colour."""
    k = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)
    rows = np.zeros((MAX_OBJECTS, 9))
    rows[:k, 0] = 1
    rows[:k, 1] = np.asarray(DSPRITES)[rng.integers(0, len(DSPRITES), k)]
    r = DSPRITES_RADIUS * rng.uniform(0.5, 1.0, k)
    rows[:k, 2] = rng.uniform(r, 1 - r)
    rows[:k, 3] = rng.uniform(r, 1 - r)
    rows[:k, 4] = r
    rows[:k, 5:8] = rng.uniform(0.0, 1.0, (k, 3))             # any colour, as Multi-dSprites' coloured sprites
    rows[:k, 8] = rng.uniform(0.0, 2 * np.pi, k)
    return rows


def _background_colour(rng: np.random.Generator, objects: np.ndarray) -> np.ndarray:
    """One colour per scene for ``background: colour``, kept apart from its objects' colours (RGB distance
    at least 0.25), as Multi-dSprites' coloured backgrounds are drawn: ``[3]`` in [0,1]."""
    present = objects[objects[:, 0] > 0, 5:8]
    for _ in range(100):
        colour = rng.uniform(0.0, 1.0, 3)
        if np.linalg.norm(present - colour, axis=1).min() >= 0.25:
            return colour
    return colour


def _shape_masks(objects: np.ndarray, size: int) -> np.ndarray:
    """objects [N,K,8] -> each object's own pixels, before occlusion, bool [N,K,H,W]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size                                   # pixel centres in [0,1]
    y, x = c[:, None], c[None, :]                                        # [H,1], [1,W]
    shape, cx, cy, r, angle = (objects[..., i, None, None].astype(np.float32) for i in (1, 2, 3, 4, 8))  # [N,K,1,1]
    cos, sin = np.cos(angle), np.sin(angle)                              # angle 0: exactly 1 and 0
    dx = cos * (x - cx) + sin * (y - cy)                                 # [N,K,H,W] in the object's own frame
    dy = cos * (y - cy) - sin * (x - cx)
    square = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)        # same area scale as the circle
    circle = dx ** 2 + dy ** 2 <= r ** 2
    triangle = (dy <= r) & (np.abs(dx) <= (dy + r) * 0.6)               # apex up, base 1.2 r wide each side
    rr = np.maximum(r, 1e-6)                                             # absent places have r = 0
    ellipse = (dx / rr) ** 2 + (dy / (0.5 * rr)) ** 2 <= 1               # dSprites' ellipse: 2:1
    hx, hy = 1.2 * dx / rr, 0.1 - 1.2 * dy / rr                          # the heart curve, point down, in [-1,1]^2
    heart = (hx ** 2 + hy ** 2 - 1) ** 3 - hx ** 2 * hy ** 3 <= 0
    shapes = (square, circle, triangle, ellipse, heart)
    own = np.select([shape == i for i in range(len(ALL_SHAPES))], shapes, False)
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
    palette = np.concatenate([np.zeros((n, 1, 3)), objects[..., 5:8]], 1)  # [N,1+K,3] index 0 = background
    colour = np.take_along_axis(palette, masks.reshape(n, -1, 1).astype(int), 1).reshape(n, size, size, 3)
    return colour, masks, ok


def make_scenes(n: int, *, size: int = 32, background: str = "grey", seed: int = 0, start: int = 0,
                kind: str = "shapes") -> Scenes:
    """Scenes ``start .. start+n-1`` of the dataset ``(kind, seed)``; scene i depends only on (kind, seed, i)."""
    _check(size, background, kind)
    if n > CHUNK:  # bounded memory: the per-object masks are [N,K,H,W]
        parts = [make_scenes(min(CHUNK, n - i), size=size, background=background, seed=seed, start=start + i,
                             kind=kind) for i in range(0, n, CHUNK)]
        return Scenes(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("images", "masks", "num_objects", "objects")))
    if n == 0:   # e.g. val_scenes: 0
        return Scenes(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8),
                      np.zeros(0, int), np.zeros((0, MAX_OBJECTS, 9)))
    rngs = [np.random.default_rng([seed, i]) for i in range(start, start + n)]
    draw = _draw_objects if kind == "shapes" else _draw_dsprites
    objects = np.stack([draw(rng) for rng in rngs])                       # [N,K,9]
    colour, masks, ok = _compose(objects, size)
    while not ok.all():                                                  # redraw the few over-occluded scenes
        bad = np.flatnonzero(~ok)
        objects[bad] = np.stack([draw(rngs[i]) for i in bad])
        colour[bad], masks[bad], ok[bad] = _compose(objects[bad], size)
    if background == "grey":
        # The noise comes from the scene's own generator, after its objects, so it is deterministic too.
        noise = np.stack([rng.normal(0.0, GREY_NOISE, (size, size, 1)) for rng in rngs])  # [N,H,W,1]
        colour = np.where(masks[..., None] == 0, GREY + noise, colour)  # [N,H,W,3] noise on the background only
    elif background == "colour":
        back = np.stack([_background_colour(rng, o) for rng, o in zip(rngs, objects)])   # [N,3]
        colour = np.where(masks[..., None] == 0, back[:, None, None], colour)
    images = np.clip(np.round(colour * 255), 0, 255).astype(np.uint8)   # [N,H,W,3]
    return Scenes(images=images, masks=masks, num_objects=objects[..., 0].sum(1).astype(int), objects=objects)
