"""Why object discovery failed on black backgrounds: short runs of the autoencoder with one thing changed.

    .venv/bin/python benchmarks/discovery_black_probe.py VARIANT OUT [KEY=VALUE ...]
    .venv/bin/python benchmarks/discovery_black_probe.py zero outputs/od_probe/zero background=black \\
        black_steps=0 eval_every=500 steps=3000

Starts from ``params/object_discovery.yaml``'s base, overridden by ``KEY=VALUE``, and trains one run
folder with ``slotlib.discover.fit.fit``. VARIANT changes the model at its start (a probe, not a
parameter; the one that helped became ``dec_colour_init``):

- ``as_set``: nothing changed (the parameters as given);
- ``zero``: the paper's start, ``dec_colour_init: zero``; and from that start:
- ``nopos``: no position embedding in the encoder (its projection fixed at zero);
- ``replicate``: the encoder's convs pad by repeating the edge pixel instead of zeros;
- ``shift``: the encoder sees the image plus 1, so a black background is 0 as the grey one is;
- ``mean_shift``: ``dec_colour_init: mean`` and the encoder sees the image less that mean colour;
- ``mean_replicate``: ``dec_colour_init: mean`` and the encoder's convs pad by repeating the edge pixel.

Results: docs/results.md, "Object discovery", black backgrounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import slotlib.discover.fit as discovery
from slotlib.config import ConfigError, DiscoveryConfig, load_params_file, parse_set
from slotlib.discover.model import SlotAutoEncoder

VARIANTS = ("as_set", "zero", "nopos", "replicate", "shift", "mean_shift", "mean_replicate")


def base_config(sets: list[str], **changes) -> DiscoveryConfig:
    """``params/object_discovery.yaml``'s base with ``KEY=VALUE`` overrides, then ``changes``, read as
    ``slotlib train --set`` reads them (bad input: one sentence, exit 2)."""
    path = Path(__file__).parents[1] / "params" / "object_discovery.yaml"
    try:
        return DiscoveryConfig.from_params({**load_params_file(path).base, **parse_set(sets), **changes},
                                           where=f"{path.name}'s base and the KEY=VALUE arguments")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: discovery_black_probe.py {{{','.join(VARIANTS)}}} OUT [KEY=VALUE ...]")
    variant, out = sys.argv[1], sys.argv[2]
    changes = {}
    if variant in ("zero", "nopos", "replicate", "shift"):
        changes["dec_colour_init"] = "zero"
    elif variant in ("mean_shift", "mean_replicate"):
        changes["dec_colour_init"] = "mean"
    cfg = base_config(sys.argv[3:], **changes)
    splits = discovery.make_splits(cfg)                                 # once: the probe and fit share them
    build = SlotAutoEncoder.from_config.__func__

    def probe(cls, c):
        model = build(cls, c)
        encoder, forward = model.encoder, model.encoder.forward
        if variant == "nopos":
            for p in encoder.pos.proj.parameters():
                p.data.zero_()
                p.requires_grad_(False)
        elif variant in ("replicate", "mean_replicate"):
            for conv in encoder.convs:
                if isinstance(conv, torch.nn.Conv2d):
                    conv.padding_mode = "replicate"
        elif variant == "shift":
            encoder.forward = lambda image: forward(image + 1.0)
        elif variant == "mean_shift":
            mean = discovery.mean_colour(splits.train.images).view(1, 3, 1, 1)
            encoder.forward = lambda image: forward(image - mean.to(image))
        return model

    SlotAutoEncoder.from_config = classmethod(probe)
    discovery.fit(cfg, out, splits=splits, progress=False, echo=print)


if __name__ == "__main__":
    main()
