"""Synthetic multi-object scenes: shapes, determinism by seed, 2-5 objects, occlusion, backgrounds."""

import numpy as np
import pytest

from slotlib.config import ConfigError
from slotlib.data.scenes import GREY, MAX_OBJECTS, MIN_OBJECTS, make_scenes


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(300, size=32, seed=3)


def test_shapes_and_types(scenes):
    assert scenes.images.shape == (300, 32, 32, 3) and scenes.images.dtype == np.uint8
    assert scenes.masks.shape == (300, 32, 32) and scenes.masks.max() <= MAX_OBJECTS
    big = make_scenes(4, size=64, seed=3)
    assert big.images.shape == (4, 64, 64, 3) and big.masks.shape == (4, 64, 64)


def test_deterministic_and_scene_i_depends_only_on_seed_and_i(scenes):
    again = make_scenes(300, size=32, seed=3)
    assert np.array_equal(again.images, scenes.images) and np.array_equal(again.masks, scenes.masks)
    window = make_scenes(5, size=32, seed=3, start=100)      # a held-out set is stable whatever its length
    assert np.array_equal(window.images, scenes.images[100:105])
    other = make_scenes(300, size=32, seed=4)
    assert not np.array_equal(other.masks, scenes.masks)


def test_two_to_five_visible_objects(scenes):
    visible = np.array([len(np.unique(m[m > 0])) for m in scenes.masks])
    assert np.array_equal(visible, scenes.num_objects)      # every drawn object stays visible
    assert visible.min() == MIN_OBJECTS and visible.max() == MAX_OBJECTS


def test_occlusion_present(scenes):
    """Objects are partly covered by later ones: fewer visible pixels than their own drawing has."""
    from slotlib.data.scenes import _shape_masks

    own = _shape_masks(scenes.objects, 32).sum((2, 3))                              # [N,K] before occlusion
    visible = (scenes.masks[:, None] == np.arange(1, MAX_OBJECTS + 1)[None, :, None, None]).sum((2, 3))  # [N,K]
    assert (visible <= own).all()
    assert (visible < own).any(1).mean() > 0.1          # a good share of scenes has occlusion
    assert (visible[own > 0] > 0).all()                 # but nothing vanishes


def test_backgrounds(scenes):
    bg = scenes.images[scenes.masks == 0].astype(float) / 255   # [pixels,3]
    assert abs(bg.mean() - GREY) < 0.01 and 0.01 < bg.std() < 0.06   # slightly noisy grey
    black = make_scenes(300, size=32, seed=3, background="black")
    assert np.array_equal(black.masks, scenes.masks)          # same objects, only the background differs
    assert (black.images[black.masks == 0] == 0).all()
    assert np.array_equal(black.images[black.masks > 0], scenes.images[scenes.masks > 0])


def test_bad_size_or_background():
    with pytest.raises(ConfigError, match="'image_size' must be one of 32, 64"):
        make_scenes(2, size=48)
    with pytest.raises(ConfigError, match="'background' must be one of grey, black, colour"):
        make_scenes(2, background="white")


def test_fast_enough():
    import time

    start = time.perf_counter()
    make_scenes(2000, size=32, seed=1)
    assert time.perf_counter() - start < 10   # about 0.3 s per 1000 scenes on a quiet laptop core


def test_shapes_scenes_are_unchanged_by_the_dsprites_kind():
    # a cell trained before 'dsprites' existed must see the same scenes (hashes taken before the change)
    import hashlib

    for background, digest in (("grey", "1ecb36ed5ca0bcbe"), ("black", "13c2b3bc703a7a21")):
        s = make_scenes(60, size=64, seed=5, background=background)
        assert hashlib.sha256(s.images.tobytes() + s.masks.tobytes()).hexdigest()[:16] == digest


@pytest.fixture(scope="module")
def sprites():
    return make_scenes(300, size=64, seed=3, kind="dsprites", background="colour")


def test_dsprites_scenes_hold_rotated_squares_ellipses_and_hearts(sprites):
    from slotlib.data.scenes import ALL_SHAPES, DSPRITES_RADIUS

    present = sprites.objects[..., 0] > 0
    shapes = {ALL_SHAPES[int(i)] for i in sprites.objects[..., 1][present]}
    assert shapes == {"square", "ellipse", "heart"}
    r, angle = sprites.objects[..., 4][present], sprites.objects[..., 8][present]
    assert r.min() >= 0.5 * DSPRITES_RADIUS - 1e-9 and r.max() <= DSPRITES_RADIUS
    assert angle.std() > 1.0                                    # rotations spread over the circle
    visible = np.array([len(np.unique(m[m > 0])) for m in sprites.masks])
    assert np.array_equal(visible, sprites.num_objects) and visible.min() == MIN_OBJECTS and visible.max() == MAX_OBJECTS
    again = make_scenes(5, size=64, seed=3, kind="dsprites", background="colour", start=10)
    assert np.array_equal(again.images, sprites.images[10:15])


def test_dsprites_shapes_by_hand():
    from slotlib.data.scenes import _shape_masks

    def one(shape, angle=0.0, r=0.25):
        row = np.zeros((1, 1, 9))
        row[0, 0] = [1, shape, 0.5, 0.5, r, 1, 1, 1, angle]
        return _shape_masks(row, 64)[0, 0]

    ellipse = one(3)
    rows, cols = np.nonzero(ellipse)
    assert np.ptp(cols) > 1.8 * np.ptp(rows)                    # 2:1, long side along x at angle 0
    turned = one(3, np.pi / 2)
    rows, cols = np.nonzero(turned)
    assert np.ptp(rows) > 1.8 * np.ptp(cols)                    # a quarter turn stands it up
    heart = one(4)
    assert heart[32, 32] and heart.sum() > 0.4 * (2 * 0.25 * 64) ** 2 * 0.5
    assert not np.array_equal(heart, heart[::-1])              # a heart is not symmetric top to bottom
    assert np.array_equal(heart, heart[:, ::-1])               # but is left to right


def test_a_colour_background_is_one_colour_apart_from_the_objects(sprites):
    for image, mask, objects in zip(sprites.images[:50], sprites.masks[:50], sprites.objects[:50]):
        bg = image[mask == 0].astype(float) / 255
        assert np.ptp(bg, axis=0).max() <= 1 / 255 + 1e-9       # one colour
        colours = objects[objects[:, 0] > 0, 5:8]
        assert np.linalg.norm(colours - bg[0], axis=1).min() >= 0.25 - 2 / 255


def test_no_scenes_is_an_empty_set():
    # val_scenes: 0 is a valid setting; it asked numpy to stack nothing
    empty = make_scenes(0, size=64, kind="dsprites", background="colour")
    assert len(empty) == 0 and empty.images.shape == (0, 64, 64, 3) and empty.objects.shape[1:] == (MAX_OBJECTS, 9)
