"""The head registry: a head is a class registered by name, and nothing outside its file branches on that name.

A head maps tokens ``x [B,N,D]`` and their position encoding ``pos [1|B,N,D]`` to
``(logits [B,K], attn [B,S,N])`` (shape letters as in :mod:`slotlib.layers.slot_attention`). Its file
holds everything that is the head's own (docs/design.md, "Heads"):

- the ``nn.Module`` itself, a subclass of :class:`Head`, registered with ``@register_head(name)``;
- ``Params``: a frozen dataclass of its own parameters (flat names, each with help text, as in
  :mod:`slotlib.config.fields`), built into the module by ``from_params``;
- ``loss_terms``: what it adds to the cross-entropy (SCOUTER: lambda times the area loss);
- ``diagnostics``: per-batch figures of its attention the training loop records (SCOUTER: saturation);
- ``collapse_advice``: what to change when it learns nothing;
- ``token_norm``: the normalisation of the tokens it reads when ``token_norm`` is 'auto';
- ``bounded_attention``: whether its maps lie in [0, 1], so the report draws them on that scale.

Adding a head is one new file in this package and one import line in ``slotlib/heads/__init__.py``.
The registry follows timm's ``register_model``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..config.fields import param, require


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A head without parameters of its own."""


@dataclasses.dataclass(frozen=True)
class SlotsParams:
    """What both slot-attention heads (scouter, slot) take: how many slots, how many iterations."""

    section: ClassVar[str] = "slot heads"   # the parameter table's group of the fields declared here

    slots_per_class: int = param(1, "slots per class; a class's logit sums its slots", hashed_for_every_head=True)
    slot_iters: int = param(5, "slot-attention iterations", hashed_for_every_head=True)

    def __post_init__(self) -> None:
        require(self.slots_per_class >= 1, "slots_per_class", self.slots_per_class, "an integer >= 1")
        require(self.slot_iters >= 1, "slot_iters", self.slot_iters, "an integer >= 1")


def class_attention(attn: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``attn [B,S,N]`` -> ``[B,K,N]``: a class's P slots summed (SCOUTER's visualisation)."""
    b, s, n = attn.shape
    return attn.view(b, num_classes, s // num_classes, n).sum(2)


class Head(nn.Module):
    """Base class of the classification heads (see the module docstring for what a subclass defines)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""                  # a few words for the parameter ``head``'s help text
    Params: ClassVar[type] = NoParams
    token_norm: ClassVar[str] = "group"          # 'group', 'rms' or 'none': the tokens' normalisation under 'auto'
    # What 'auto' meant when this head's cell ids were first made (None: token_norm): a cell computing it is
    # hashed as 'auto'. It stays when token_norm's default changes, so that the change renames the head's cells.
    token_norm_hashed_as_auto: ClassVar[str | None] = None
    bounded_attention: ClassVar[bool] = False    # attention in [0, 1]: the report's heatmaps use that fixed scale
    loss_weights: ClassVar[tuple[str, ...]] = ()  # parameters weighing loss_terms, named in the collapse advice

    @classmethod
    def from_params(cls, params: Any, num_classes: int, dim: int) -> "Head":
        """The head for ``num_classes`` classes over ``dim``-channel tokens, with its ``Params``."""
        raise NotImplementedError

    def evidence(self, tokens: torch.Tensor, attn: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Each token's evidence for each class against the mean class: ``tokens [B,N,D]``, ``attn [B,S,N]``
        (this forward's) -> ``[B,K,N]``, the explanation benchmark's method ``evidence``.

        Softmax reads only the logits' differences from their mean over the classes. A head whose logit is
        a sum of per-token terms overrides this with those terms, centred over the classes: they add up to
        the centred logits (SCOUTER, the linear head). This default centres the class attention (a
        class's slots summed) over the classes: positive where a class holds more than the mean class."""
        per_class = class_attention(attn, num_classes)                      # [B,K,N]
        return per_class - per_class.mean(1, keepdim=True)

    def loss_terms(self, attn: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """Terms added to the cross-entropy, by name: (weight, value), the value a scalar of ``attn [B,S,N]``."""
        return {}

    def diagnostics(self, attn: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalars of one training batch's attention ``[B,S,N]``, by name, left on the device (no sync)."""
        return {}

    @classmethod
    def collapse_advice(cls, params: Any, lr_name: str) -> str:
        """What to change when the head collapsed in the stage whose learning rate is ``lr_name``."""
        return (f"lower {lr_name}" + "".join(f" or {w}" for w in cls.loss_weights)
                + ", or attend over a larger token map (output_stride: null or 16, or a larger image_size)")


HEADS: dict[str, type[Head]] = {}   # name -> head class, in the order of the `head:` choices


DEFAULT_HEAD = "scouter"   # the reference's head, and the parameter ``head``'s default


def register_head(name: str):
    """Class decorator: ``@register_head('scouter')`` makes the head available as ``head: scouter``."""

    def register(cls: type[Head]) -> type[Head]:
        if name in HEADS:
            raise ValueError(f"a head named {name!r} is registered already ({HEADS[name].__qualname__})")
        if not dataclasses.is_dataclass(cls.Params):
            raise TypeError(f"{cls.__qualname__}.Params must be a dataclass")
        cls.name = name
        HEADS[name] = cls
        return cls

    return register


def head_class(name: str) -> type[Head]:
    """The head registered as ``name``; a KeyError names the registered ones."""
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"no head named {name!r}; registered: {', '.join(HEADS)}") from None


def head_names() -> tuple[str, ...]:
    return tuple(HEADS)


def heads_help() -> str:
    """The choices of the parameter ``head``, each with its summary."""
    return ", ".join(f"'{name}' ({cls.summary})" if cls.summary else f"'{name}'" for name, cls in HEADS.items())
