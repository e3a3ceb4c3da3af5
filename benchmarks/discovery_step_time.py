"""Where an object-discovery training step's time goes: forward + backward of each part of the autoencoder.

    .venv/bin/python benchmarks/discovery_step_time.py PARAMS_FILE [KEY=VALUE ...] [--variant KEY=VALUE,...]
    .venv/bin/python benchmarks/discovery_step_time.py params/object_discovery_dsprites.yaml \\
        --variant image_size=32 --variant enc_stride=4 --variant dec_broadcast=16 --variant dec_channels=32

Builds ``SlotAutoEncoder`` from the params file's base (overridden by ``KEY=VALUE``), then once more for
each ``--variant`` (comma-separated changes on top), and times on random images of one batch (the model's
weights do not change the time): the whole step (forward, reconstruction MSE, backward), the encoder
alone, slot attention alone (on fixed tokens) and the decoder alone (on fixed slots), each the median of 5
after one warm-up, in seconds. The optimiser step and data are left out. Quote the machine (``lscpu``
flags) with what it prints. Results: docs/results.md, "Multi-dSprites-style scenes".
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from slotlib.config import ConfigError, DiscoveryConfig, load_params_file, parse_set
from slotlib.discover.model import SlotAutoEncoder


def seconds(fn: Callable[[], None], repeats: int = 5) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def parts(cfg: DiscoveryConfig) -> dict[str, float]:
    """Seconds of forward + backward for the whole step and for each part, on one random batch."""
    torch.manual_seed(0)
    model = SlotAutoEncoder.from_config(cfg).train()
    b, size = cfg.batch_size, cfg.image_size
    image = torch.rand(b, 3, size, size) * 2 - 1
    tokens = model.encoder(image).detach().requires_grad_()
    slots = torch.randn(b, cfg.num_slots, cfg.slot_dim, requires_grad=True)

    def step() -> None:
        model.zero_grad()
        (model(image).recon - image).square().mean().backward()

    def encoder() -> None:
        model.zero_grad()
        model.encoder(image).sum().backward()

    def attention() -> None:
        model.zero_grad()
        model.attention(tokens, model.init(b))[0].sum().backward()

    def decoder() -> None:
        model.zero_grad()
        rgb, alpha = model.decoder(slots)
        (rgb.sum() + alpha.sum()).backward()

    return {name: seconds(fn) for name, fn in
            {"step": step, "encoder": encoder, "slot attention": attention, "decoder": decoder}.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("params_file")
    ap.add_argument("sets", nargs="*", help="KEY=VALUE overrides of the base, as slotlib's --set")
    ap.add_argument("--variant", action="append", default=[], help="KEY=VALUE[,KEY=VALUE...] on top of the base")
    args = ap.parse_args()
    try:                                    # the project's own reader and --set parser, so bad input reads the same
        base = {**load_params_file(args.params_file).base, **parse_set(args.sets)}
        variants = [{}, *(parse_set(v.split(",")) for v in args.variant)]
        configs = [DiscoveryConfig.from_params({**base, **changes}, where=args.params_file) for changes in variants]
    except ConfigError as err:                              # every variant checked before any is timed
        ap.error(str(err))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds of forward + backward")
    for changes, cfg in zip(variants, configs):
        times = parts(cfg)
        label = ", ".join(f"{k}={v}" for k, v in changes.items()) or "base"
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in times.items())
              + f" ({1 / times['step']:.2f} steps/s at most)", flush=True)


if __name__ == "__main__":
    main()
