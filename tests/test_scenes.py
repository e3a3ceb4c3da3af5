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
    with pytest.raises(ConfigError, match="'background' must be one of grey, black"):
        make_scenes(2, background="white")


def test_fast_enough():
    import time

    start = time.perf_counter()
    make_scenes(2000, size=32, seed=1)
    assert time.perf_counter() - start < 10   # about 0.3 s per 1000 scenes on a quiet laptop core
