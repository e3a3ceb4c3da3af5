"""Do the heads learn? Each head trained on frozen ImageNet features of EuroSAT, computed once.

Stage 1 of a run (backbone frozen), without augmentation, so every head sees exactly the same
features and a head costs seconds per epoch on a CPU: the quickest way to see whether a head
learns at all, and how it compares with the linear baseline. The backbone's deepest feature map
is computed once for the first ``--per-class`` tiles of each class at ``--image-size``, split
70/30 into train and validation (seeded), and cached in ``--cache``.

    EUROSAT_ROOT=../shared/data python benchmarks/frozen_heads.py \\
        --weights ../shared/weights/mobilenetv2_100.tv_in1k_qnnpack_dequant.pth \\
        --run head=linear --run head=scouter --run head=scouter,scouter_norm=scouter --run head=slot

Each ``--run`` is a comma-separated list of parameter overrides (slotlib parameter names).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slotlib.config import Config, parse_set
from slotlib.data.eurosat import load_eurosat
from slotlib.data.transforms import normalization
from slotlib.classify.losses import classification_loss
from slotlib.classify.model import SlotClassifier


def features(args) -> tuple[torch.Tensor, torch.Tensor]:
    cache = Path(args.cache) / f"{args.backbone}_{args.per_class}_{args.image_size}_s{args.feature_stride}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        return saved["features"].float(), saved["labels"]
    ds = load_eurosat(os.environ.get("EUROSAT_ROOT", "./data"), per_class_limit=args.per_class)
    cfg = Config.from_params({"backbone": args.backbone, "pretrained_file": args.weights, "head": "linear",
                              "feature_stride": args.feature_stride})
    backbone = SlotClassifier(cfg.model, 10, image_size=args.image_size).backbone.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in normalization(args.backbone))
    images = torch.from_numpy(np.asarray(ds.images)).permute(0, 3, 1, 2)              # [M,3,64,64] uint8
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            x = F.interpolate(images[i:i + 64].float(), size=(args.image_size,) * 2, mode="bilinear",
                              antialias=True, align_corners=False)
            out.append(backbone((x - mean) / std)[-1].half())                       # [b,C,H,W]
    feats, labels = torch.cat(out), torch.as_tensor(np.asarray(ds.labels))
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features": feats, "labels": labels}, cache)
    return feats.float(), labels


def train_head(overrides: dict, feats, labels, train, val, args) -> list[float]:
    cfg = Config.from_params({"backbone": args.backbone, "pretrained": False, "feature_stride": args.feature_stride,
                              **overrides})
    torch.manual_seed(cfg.train.seed)
    model = SlotClassifier(cfg.model, 10, pretrained=False, head_params=cfg.head_params)
    params = model.head_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    accs = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            logits, attn = model.from_features(feats[idx])
            loss, _ = classification_loss(logits, labels[idx], attn, model.head)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            logits, _ = model.from_features(feats[val])
        accs.append((logits.argmax(1) == labels[val]).float().mean().item())
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--weights", required=True, help="ImageNet weights file for the backbone")
    parser.add_argument("--per-class", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--feature-stride", type=int, default=None, help="feature level, by stride (default: deepest)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/slotlib/frozen_heads"))
    parser.add_argument("--run", action="append", required=True, metavar="K=V,K=V",
                        help="parameter overrides of one head setting (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    feats, labels = features(args)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, val = perm[: int(0.7 * n)], perm[int(0.7 * n):]
    print(f"{args.backbone} features {tuple(feats.shape[1:])} (C, H, W) at {args.image_size} px, {len(train)} train / "
          f"{len(val)} val tiles, {args.epochs} epochs at {args.lr:g}")
    for spec in args.run:
        overrides = parse_set(spec.split(","))
        for seed in args.seed:
            start = time.perf_counter()
            accs = train_head({**overrides, "seed": seed}, feats, labels, train, val, args)
            print(f"{spec:45s} seed {seed}: val {accs[-1]:.3f} (best {max(accs):.3f}; epoch 1 {accs[0]:.3f}) "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
