"""timm backbones: build one (``features_only``), find its weights offline, choose its output stride.

The backbone is the source of truth: channels and strides come from its ``feature_info``. A new
backbone family goes here (how to build it and what token map it gives).

References:
    timm feature extraction: https://huggingface.co/docs/timm/feature_extraction
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re

import timm
import torch
from torch import nn

from ..config import MIN_TOKENS, ConfigError, ModelConfig
from ..layers.dilated_conv import speed_up_dilated_depthwise
from . import vit_variants  # registers the slotvit_* backbones with timm


def create_backbone(cfg: ModelConfig, pretrained: bool | None = None, image_size: int | None = None) -> nn.Module:
    """A timm ``features_only`` backbone that returns the one feature level the head attends over.

    Only the stages up to that level are built, so no unused parameter is counted.
    ``pretrained=None`` follows the config; ``False`` builds random weights (e.g. to count parameters).
    ``image_size`` lets ``output_stride: null`` dilate the last stages where the backbone's own stride
    would leave fewer than ``MIN_TOKENS`` tokens a side (see ``output_stride_for``).
    """
    if not timm.is_model(cfg.backbone):
        raise ConfigError(f"parameter 'backbone' must be a timm model name, got {cfg.backbone!r} "
                          f"(see timm.list_models())")
    kwargs: dict = {"features_only": True}
    if vit_variants.is_slotvit(cfg.backbone) and image_size is not None:
        kwargs["img_size"] = image_size   # its position embedding and token grid are built for this size
    if cfg.drop_path > 0:
        kwargs["drop_path_rate"] = cfg.drop_path
    index = -1 if cfg.feature_stride is None else _level_of(cfg.backbone, cfg.feature_stride)
    output_stride = output_stride_for(cfg, image_size)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    if pretrained is None:
        pretrained = cfg.starts_pretrained
    use_weights = pretrained
    source = "the timm hub"
    if use_weights and cfg.pretrained_file is not None:
        if not os.path.isfile(cfg.pretrained_file):
            raise ConfigError(f"parameter 'pretrained_file' names {cfg.pretrained_file!r}, which is not a file; "
                              f"give the path of a state_dict saved for timm '{cfg.backbone}'")
        kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(cfg.pretrained_file)}
        source = f"'pretrained_file' {cfg.pretrained_file!r}"
    elif use_weights and os.environ.get(WEIGHTS_ENV):
        path = local_weights(cfg.backbone, os.environ[WEIGHTS_ENV])
        kwargs["pretrained_cfg_overlay"] = {"file": path}
        source = f"{WEIGHTS_ENV} file {path!r}"
    try:
        return _finish(_create_model(cfg.backbone, pretrained=use_weights, out_indices=(index,), **kwargs))
    except TypeError as err:
        if "output_stride" not in str(err):
            raise
        if cfg.output_stride is None:   # auto: a backbone that cannot dilate keeps its own stride
            return _finish(_create_model(cfg.backbone, pretrained=use_weights, out_indices=(index,),
                                         **{k: v for k, v in kwargs.items() if k != "output_stride"}))
        raise ConfigError(f"parameter 'output_stride' is {output_stride}, but timm '{cfg.backbone}' cannot dilate "
                          f"its stages (its constructor takes no output_stride); leave output_stride: null") from None
    except OSError as err:  # the hub could not be reached and nothing is cached
        raise ConfigError(f"could not load ImageNet weights for '{cfg.backbone}' from {source} "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); set {WEIGHTS_ENV} to "
                          f"a folder holding {cfg.backbone}*.pth (or .safetensors), 'pretrained_file' to a weights "
                          f"file, or 'pretrained: false'") from None
    except RuntimeError as err:  # state_dict keys or shapes do not fit
        raise ConfigError(f"weights in {source} do not fit timm '{cfg.backbone}' ({load_problem(err)}): they are "
                          f"probably another model's; name the file of this backbone's weights, or set "
                          f"'pretrained: false'") from None


def load_problem(err: RuntimeError) -> str:
    """torch's load_state_dict error in a few words: the first missing and unexpected key, or the first
    shape mismatch (torch puts them on lines after a heading that ends with a colon)."""
    text = str(err)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: \"([^\"]+)\""),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: \"([^\"]+)\""),
                           ("wrong shape", r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\)"
                                           r" from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")):
        found = re.search(pattern, text)
        if found:
            parts.append(f"{label}: {found.group(1)}" + (f" ({found.group(2)} in the file, {found.group(3)} in the "
                                                         f"model)" if found.lastindex == 3 else ""))
    if not parts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else type(err).__name__
    return "; ".join(parts)


TIMM_LOAD_LOG = "timm.models._builder"   # the logger of timm's load_pretrained
_UNEXPECTED_KEYS = re.compile(r"Unexpected keys \((.*)\) found while loading pretrained weights")


class _HoldUnexpectedKeys(logging.Filter):
    """Holds back timm's "Unexpected keys (...) found while loading pretrained weights" records."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[logging.LogRecord, list[str]]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        found = _UNEXPECTED_KEYS.match(record.getMessage())
        if found:
            self.held.append((record, found.group(1).split(", ")))
        return not found


def _create_model(*args, **kwargs) -> nn.Module:
    """``timm.create_model`` without the warning a ``features_only`` load gives for the classifier
    head the model leaves out (mobilenetv2: ``Unexpected keys (conv_head.weight, bn2.weight, ...)``).

    Only a key under a module the built model does not have is expected; a message naming any other key
    (weights of another architecture, a renamed layer) is logged as timm wrote it, as is every other one.
    """
    log = logging.getLogger(TIMM_LOAD_LOG)
    hold = _HoldUnexpectedKeys()
    log.addFilter(hold)
    model = None
    try:
        model = timm.create_model(*args, **kwargs)
        return model
    finally:
        log.removeFilter(hold)
        for record, keys in hold.held:
            if model is None or any(_has_part(model, key.split(".")[0]) for key in keys):
                log.handle(record)


def _has_part(model: nn.Module, name: str) -> bool:
    return name in model._modules or name in model._parameters or name in model._buffers


def _finish(model: nn.Module) -> nn.Module:
    """The built backbone without its unused stages, its dilated depthwise convolutions given a fast CPU
    backward (same weights and state_dict; see slotlib.layers.dilated_conv)."""
    speed_up_dilated_depthwise(without_unused_stages(model))
    return model


def without_unused_stages(model: nn.Module) -> nn.Module:
    """Drop the blocks after the deepest level a ``features_only`` model returns.

    timm's FeatureListNet models already stop there; the EfficientNet family (``EfficientNetFeatures``:
    mobilenetv2, efficientnet, ...) builds and runs every block, so ``feature_stride: 8`` would count
    and compute the unused later stages (mobilenetv2_100: 1.78M of its 1.81M parameters)."""
    name = model.feature_info.module_name()[-1]
    head, _, tail = name.partition(".")
    blocks = getattr(model, head, None)
    if head == "blocks" and tail.isdigit() and isinstance(blocks, nn.Sequential) and len(blocks) > int(tail) + 1:
        model.blocks = blocks[:int(tail) + 1]
    return model


WEIGHTS_ENV = "SLOTLIB_WEIGHTS"


_WEIGHTS_FOUND: set[tuple] = set()


def check_weights(cfg: ModelConfig) -> None:
    """Raise the one-sentence ConfigError of :func:`create_backbone` now if a pretrained backbone's
    weights cannot be had (a local file or folder missing; the hub unreachable with nothing cached).
    Loads them once per backbone and source (from the hub this fills timm's cache for the cells)."""
    if not cfg.starts_pretrained:
        return
    key = (cfg.backbone, cfg.pretrained_file, os.environ.get(WEIGHTS_ENV))
    if key in _WEIGHTS_FOUND:
        return
    with torch.random.fork_rng(devices=[]):   # leaves the random stream of anything after it alone
        create_backbone(dataclasses.replace(cfg, feature_stride=None, output_stride=None, drop_path=0.0),
                        pretrained=True)
    _WEIGHTS_FOUND.add(key)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def local_weights(backbone: str, where: str) -> str:
    """The weights file for ``backbone`` that ``$SLOTLIB_WEIGHTS`` names: the file itself, or in a folder
    the one file named ``<backbone>.<anything>`` with a weights suffix (e.g. mobilenetv2_100.tv_in1k.pth)."""
    if os.path.isfile(where):
        return os.path.abspath(where)
    if not os.path.isdir(where):
        raise ConfigError(f"{WEIGHTS_ENV}={where!r} is neither a file nor a folder; point it at a folder of "
                          f"backbone weights files or at one such file")
    found = sorted(name for name in os.listdir(where)
                   if name.endswith(WEIGHT_SUFFIXES) and (name.split(".")[0] == backbone))
    if not found:
        raise ConfigError(f"{WEIGHTS_ENV}={where!r} holds no weights for '{backbone}' (a file named "
                          f"{backbone}.<tag>.pth or .safetensors); add one, unset {WEIGHTS_ENV} to use the timm "
                          f"hub, or set 'pretrained: false'")
    if len(found) > 1:
        raise ConfigError(f"{WEIGHTS_ENV}={where!r} holds several weights files for '{backbone}' "
                          f"({', '.join(found)}); keep one, or name it with 'pretrained_file'")
    return os.path.abspath(os.path.join(where, found[0]))


@functools.lru_cache(maxsize=None)
def _strides(backbone: str) -> tuple[int, ...]:
    """The strides of a backbone's feature levels, from its ``feature_info`` (random weights, built once).

    Built under a forked RNG: the first call in a process must not consume random numbers that a
    later call (cached) would not, or a resumed run would start from other weights than the original.
    """
    with torch.random.fork_rng(devices=[]):
        return tuple(timm.create_model(backbone, pretrained=False, features_only=True).feature_info.reduction())


def output_stride_for(cfg: ModelConfig, image_size: int | None) -> int | None:
    """The ``output_stride`` to pass to timm, or None to build the backbone as it is.

    An explicit ``output_stride`` below the backbone's own stride is passed on. ``null`` (auto) keeps the
    backbone as it is unless its deepest level would give fewer than ``MIN_TOKENS`` tokens a side at
    ``image_size``; then it takes the largest of 16 and 8 that gives at least that many (64 px through a
    stride-32 backbone: 16, a 4 x 4 map instead of 2 x 2). Dilation keeps the pretrained weights and the
    parameter count; it costs compute in the dilated stages.
    """
    if cfg.feature_stride is not None or (cfg.output_stride is None and image_size is None):
        return None   # nothing to decide: no model is built to look up the backbone's stride
    native = _strides(cfg.backbone)[-1]
    if cfg.output_stride is not None:
        return cfg.output_stride if cfg.output_stride != native else None
    if image_size // native >= MIN_TOKENS:
        return None
    smaller = [s for s in (16, 8) if s < native]
    if not smaller:
        return None
    return next((s for s in smaller if image_size // s >= MIN_TOKENS), smaller[-1])


def _level_of(backbone: str, stride: int) -> int:
    """The out_index of the deepest level with this stride: -1 for the last (a ViT's blocks all share one
    stride, so its ``feature_stride`` is its patch size and means the last block)."""
    strides = list(_strides(backbone))
    if stride not in strides:
        raise ConfigError(f"parameter 'feature_stride' must be one of {sorted(set(strides))} for '{backbone}', "
                          f"got {stride}")
    index = len(strides) - 1 - strides[::-1].index(stride)
    return -1 if index == len(strides) - 1 else index
