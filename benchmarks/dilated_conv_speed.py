"""Training-step speed of a 64 px model with and without slotlib's dilated depthwise convolution
(``slotlib.layers.dilated_conv``): random weights, one fixed batch, forward + cross-entropy + backward +
AdamW, 5 warm-up steps then 3 x 15 timed steps; images/s per repeat. No data is read.

    .venv/bin/python benchmarks/dilated_conv_speed.py                # mobilenetv2_100, SCOUTER, batch 32
    .venv/bin/python benchmarks/dilated_conv_speed.py --head linear --output-stride 8
"""

from __future__ import annotations

import argparse
import time

import torch

import slotlib.classify.backbone as backbone
from slotlib.classify.model import SlotClassifier
from slotlib.config import Config
from slotlib.heads import DEFAULT_HEAD, HEADS


def images_per_second(fast: bool, args) -> list[float]:
    original = backbone.speed_up_dilated_depthwise
    if not fast:
        backbone.speed_up_dilated_depthwise = lambda model: 0
    try:
        cfg = Config.from_params({"backbone": args.backbone, "pretrained": False, "image_size": args.image_size,
                                  "head": args.head, "output_stride": args.output_stride})
        torch.manual_seed(0)
        model = SlotClassifier(cfg.model, 10, pretrained=False, image_size=args.image_size,
                               head_params=cfg.head_params).train()
    finally:
        backbone.speed_up_dilated_depthwise = original
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4, fused=True)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    out = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(15):
            step()
        out.append(args.batch * 15 / (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--head", default=DEFAULT_HEAD, choices=HEADS)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--output-stride", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    for fast in (False, True):
        rates = images_per_second(fast, args)
        print(f"{'slotlib dilated depthwise' if fast else 'nn.Conv2d (oneDNN)':>26}: "
              + " ".join(f"{r:.0f}" for r in rates) + " training images/s", flush=True)


if __name__ == "__main__":
    main()
