"""Classification heads over backbone tokens, one file each, registered by name (``head:``).

    registry.py   Head (the base class), register_head, head_class; what a head's file defines
    scouter.py    SCOUTER: sigmoid slot attention, area loss, saturation (``head: scouter``)
    slot.py       Locatello slot attention, softmax over slots, per-class slots (``head: slot``)
    linear.py     mean-pooled tokens and a linear layer, the baseline (``head: linear``)

A new head is one file here, a ``Head`` subclass with ``@register_head(name)``, and one import below.
"""

# Each import registers its head; their order is the order of the `head:` choices.
from . import scouter  # noqa: F401  isort: skip
from . import slot  # noqa: F401  isort: skip
from . import linear  # noqa: F401  isort: skip
from .registry import (DEFAULT_HEAD, HEADS, Head, NoParams, SlotsParams, head_class, head_names, heads_help,
                       register_head)

__all__ = ["DEFAULT_HEAD", "HEADS", "Head", "NoParams", "SlotsParams", "head_class", "head_names", "heads_help",
           "register_head"]
