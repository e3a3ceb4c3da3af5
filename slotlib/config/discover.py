"""The object-discovery autoencoder's parameters (object_discovery.ipynb): DiscoveryConfig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .fields import ConfigError, at_unhashed_value, coerce, did_you_mean, param, require, type_hints, where_suffix

DISCOVERY_SIZES = (32, 64)


DISCOVERY_BACKGROUNDS = ("grey", "black", "colour")
DISCOVERY_SCENES = ("shapes", "dsprites")


@dataclass(frozen=True)
class DiscoveryConfig:
    """The slot-attention autoencoder on synthetic scenes (notebooks/object_discovery.ipynb): one concern, one class."""

    # scenes (slotlib.data.scenes)
    image_size: int = param(32, "scene size in pixels: 32 or 64")
    background: str = param("grey", "'grey' (slightly noisy grey), 'black' (plain; with dec_colour_init 'zero' "
                            "the slots take stripes) or 'colour' (one random colour per scene, Multi-dSprites' coloured variant)")
    scenes: str = param("shapes", "'shapes' (square, circle, triangle, upright) or 'dsprites' (Multi-dSprites-style: "
                        "dSprites' square, ellipse and heart at a random scale, rotation, position and colour)",
                        unhashed_at="shapes")
    scene_seed: int = param(0, "seed of the scene dataset; training, validation and test scenes are disjoint index ranges")
    train_scenes: int = param(20000, "training scenes, cycled through in a fresh order every pass")
    val_scenes: int = param(200, "validation scenes for FG-ARI during training")
    test_scenes: int = param(500, "held-out test scenes for the final FG-ARI and MSE")
    # model (slotlib.discover.model.SlotAutoEncoder)
    num_slots: int = param(6, "slots: at least the most objects in a scene (5) plus one for the background")
    slot_dim: int = param(64, "slot and token dimension D")
    mlp_hidden: int = param(128, "hidden width of the slot-attention MLP")
    slot_iters: int = param(3, "slot-attention iterations in training")
    eval_iters: int = param(0, "slot-attention iterations for validation, test and figures; 0: slot_iters. With "
                         "bilevel the iteration is trained as a fixed point, so more iterations refine the masks")
    eval_masks: str = param("alpha", "the masks FG-ARI and the segmentation figures read: 'alpha' (the decoder's masks, "
                         "the paper's readout) or 'posterior' (those masks given each pixel's colour under the "
                         "decoder's mixture); metrics.json always holds both")
    slot_init: str = param("per_slot", "initial slots: 'per_slot' (a learned Gaussian per slot, BO-QSA) or 'shared' "
                        "(one Gaussian, the paper's); fresh samples every pass either way")
    bilevel: bool = param(True, "backpropagate through the last slot iteration only, straight through to the "
                       "initial slots (BO-QSA); false: through every iteration, as in the paper")
    enc_channels: int = param(32, "channels of the 4 encoder convs (5x5)")
    enc_stride: int = param(2, "stride of the first encoder conv: 1 attends to every pixel, 2 or 4 to a 4x or 16x smaller grid")
    enc_kernel: int = param(5, "kernel size of the encoder convs (odd); small keeps tokens close to their pixel colour")
    dec_channels: int = param(16, "channels of the spatial-broadcast decoder")
    dec_broadcast: int = param(8, "grid the decoder broadcasts each slot on; stride-2 transposed convs reach the image size")
    dec_size: int = param(0, "side the decoder paints at; its RGB and alpha logits are upsampled bilinearly to the image "
                          "size. 0: the image size. 32 at image_size 64 makes a CPU step about twice as fast",
                          unhashed_at=0)
    dec_colour_init: str = param("mean", "where each slot's painted colour starts: 'mean' (the training scenes' mean colour, "
                                 "so a black background is not learnt first), 'zero' (the paper's: mid-grey) or "
                                 "'image' (each image's own mean colour, added to every painting: for backgrounds "
                                 "whose colour changes from scene to scene)",
                                 unhashed_at="zero")
    # training
    mask_entropy: float = param(0.0, "weight of the alpha masks' per-pixel entropy over slots (nats, mean over pixels) "
                                "added to the MSE: sharp masks make a misplaced edge cost its full colour error; "
                                "0: MSE alone, as in the paper", unhashed_at=0.0)
    mask_entropy_from: int = param(0, "mask_entropy applies after this many steps; a penalty from the start makes one "
                                   "slot take every pixel before the slots have found objects", unhashed_at=0)
    batch_size: int = param(32, "scenes per optimiser step")
    steps: int = param(5500, "optimiser steps")
    lr: float = param(1e-3, "Adam peak learning rate")
    warmup_steps: int = param(300, "linear learning-rate warm-up from 0 to lr")
    decay_steps: int = param(5000, "the learning rate halves every decay_steps (exponential decay, as in the paper)")
    grad_clip: float | None = param(1.0, "clip the gradient norm to this; null turns clipping off")
    eval_every: int = param(500, "steps between FG-ARI evaluations on the validation scenes; 0 only at the end")
    black_steps: int = param(0, "notebook comparison: also train the same model this many steps on black scenes; 0 skips")
    seed: int = param(0, "seed of the model initialisation, slot sampling and batch order")
    device: str = param("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    num_threads: int = param(0, "torch CPU threads; 0 keeps torch's default")

    def __post_init__(self) -> None:
        require(self.image_size in DISCOVERY_SIZES, "image_size", self.image_size,
                 f"one of {', '.join(map(str, DISCOVERY_SIZES))} for object discovery")
        require(self.background in DISCOVERY_BACKGROUNDS, "background", self.background,
                 f"one of {', '.join(DISCOVERY_BACKGROUNDS)}")
        require(self.scenes in DISCOVERY_SCENES, "scenes", self.scenes, f"one of {', '.join(DISCOVERY_SCENES)}")
        for key in ("train_scenes", "test_scenes", "num_slots", "slot_dim", "mlp_hidden", "slot_iters",
                    "enc_channels", "dec_channels", "batch_size", "steps", "decay_steps"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        for key in ("val_scenes", "mask_entropy_from", "warmup_steps", "eval_every", "black_steps", "num_threads",
                    "eval_iters"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "an integer >= 0")
        require(self.eval_masks in ("alpha", "posterior"), "eval_masks", self.eval_masks, "'alpha' or 'posterior'")
        require(self.slot_init in ("per_slot", "shared"), "slot_init", self.slot_init, "'per_slot' or 'shared'")
        require(self.enc_stride in (1, 2, 4), "enc_stride", self.enc_stride, "1, 2 or 4")
        require(self.enc_kernel in (1, 3, 5, 7), "enc_kernel", self.enc_kernel, "1, 3, 5 or 7")
        sides = [self.image_size >> k for k in range(6) if self.image_size >> k >= 4]
        require(self.dec_broadcast in sides, "dec_broadcast", self.dec_broadcast,
                 f"the image size divided by a power of two, one of {', '.join(map(str, sides))}")
        paint = [side for side in sides if side >= self.dec_broadcast]
        require(self.dec_size in [0, *paint], "dec_size", self.dec_size,
                f"0 (the image size) or a size the broadcast grid {self.dec_broadcast} doubles to, one of "
                f"{', '.join(map(str, paint))}")
        require(self.dec_colour_init in ("mean", "zero", "image"), "dec_colour_init", self.dec_colour_init,
                "'mean', 'zero' or 'image'")
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        require(self.mask_entropy >= 0, "mask_entropy", self.mask_entropy, "a number >= 0")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "null or a number > 0")
        require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "device", self.device,
                 "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, *, where: str = "") -> "DiscoveryConfig":
        """Validate flat ``params`` (overrides of the defaults) into a DiscoveryConfig."""
        params, names = dict(params or {}), cls.fields()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(f"unknown parameter '{unknown[0]}'{where_suffix(where)}{did_you_mean(unknown[0], names)}; "
                              f"valid names: {', '.join(names)}")
        hints = type_hints(cls)
        values = {n: coerce(n, params.get(n, f.default), hints[n], where) for n, f in names.items()}
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{err}{where_suffix(where)}" if where else str(err)) from None

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of every parameter that changes what is computed (not the CPU thread count)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        params = {k: v for k, v in self.to_params().items()
                  if k not in DISCOVERY_LOCAL_ONLY and not at_unhashed_value(fields[k], v)}   # newer keys at their old value
        if params.get("dec_size") == self.image_size:   # the image size spelt out computes what 0 does: one cell id
            del params["dec_size"]
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


DISCOVERY_LOCAL_ONLY = ("num_threads",)
