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

from slotlib.classify.frozen import frozen_features, train_on_features
from slotlib.config import Config, parse_set
from slotlib.data.eurosat import load_eurosat


def features(args) -> tuple[torch.Tensor, torch.Tensor]:
    cache = Path(args.cache) / f"{args.backbone}_{args.per_class}_{args.image_size}_s{args.feature_stride}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        return saved["features"].float(), saved["labels"]
    ds = load_eurosat(os.environ.get("EUROSAT_ROOT", "./data"), per_class_limit=args.per_class)
    cfg = Config.from_params({"backbone": args.backbone, "pretrained_file": args.weights, "head": "linear",
                              "feature_stride": args.feature_stride, "image_size": args.image_size})
    feats, labels = frozen_features(cfg, ds.images).half(), torch.as_tensor(np.asarray(ds.labels))   # [M,C,H,W]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"features": feats, "labels": labels}, cache)
    return feats.float(), labels


def train_head(overrides: dict, feats, labels, train, val, args) -> list[float]:
    cfg = Config.from_params({"backbone": args.backbone, "pretrained": False, "feature_stride": args.feature_stride,
                              "stage1_lr": args.lr, "batch_size": args.batch_size, **overrides})
    return train_on_features(cfg, feats, labels, train, val, epochs=args.epochs).val_acc


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
