"""How fast does each head start? Stage 1 on frozen features, traced step by step.

For issue-style questions such as "why does SCOUTER start slower than the linear head": the backbone's
features of a run's training and validation tiles are computed once (slotlib.classify.frozen), then each
``--run`` trains its head on them for ``--epochs`` epochs with the run's optimiser, and every
``--trace-every`` steps records the loss and its parts, the attention's mean and saturation, the spread of
the logits and the gradient norm of each parameter group. Prints a table per run and the validation
accuracy after each epoch; ``--csv`` writes every traced row.

    EUROSAT_ROOT=../shared/data SLOTLIB_WEIGHTS=../shared/weights python benchmarks/head_start.py \\
        --run head=linear --run head=scouter --run head=slot --seed 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import time

import torch

from slotlib.classify.frozen import frozen_features, train_on_features
from slotlib.config import Config, parse_set
from slotlib.data.eurosat import load_eurosat
from slotlib.data.splits import split_indices

BASE = {"backbone": "mobilenetv2_100", "pretrained": True, "image_size": 64, "per_class_limit": 300,
        "stage1_lr": 1e-3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="K=V,K=V",
                        help="parameter overrides of one head setting (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="overrides for every run")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--trace-every", type=int, default=10)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    base = {**BASE, **parse_set(args.set)}
    cfg = Config.from_params(base)
    ds = load_eurosat(cfg.data.data_root, per_class_limit=cfg.data.per_class_limit)
    splits = split_indices(ds, "random", split_seed=cfg.data.split_seed, split_fractions=cfg.data.split_fractions)
    start = time.perf_counter()
    idx = torch.as_tensor(list(splits["train"]) + list(splits["val"]))
    feats = frozen_features(cfg, ds.images[idx.numpy()])
    labels = torch.as_tensor(ds.labels)[idx]
    train, val = torch.arange(len(splits["train"])), torch.arange(len(splits["train"]), len(idx))
    print(f"features {tuple(feats.shape[1:])} of {len(train)} train / {len(val)} val tiles in "
          f"{time.perf_counter() - start:.0f} s; {args.epochs} epoch(s) at stage1_lr {cfg.train.stage1_lr:g}")
    rows = []
    for spec in args.run:
        for seed in args.seed:
            config = Config.from_params({**base, **parse_set(spec.split(",")), "seed": seed})
            run = train_on_features(config, feats, labels, train, val, epochs=args.epochs,
                                    trace_every=args.trace_every)
            print(f"{spec} seed {seed}: val acc by epoch " + " ".join(f"{a:.3f}" for a in run.val_acc))
            if seed == args.seed[0]:
                keys = [k for k in run.trace[0] if k != "step"]
                print("  step " + " ".join(f"{k[:12]:>12s}" for k in keys))
                for r in run.trace:
                    print(f"  {r['step']:4d} " + " ".join(f"{r[k]:12.4g}" for k in keys))
            rows += [{"run": spec, "seed": seed, **r} for r in run.trace]
    if args.csv:
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("run", "seed", "step"), k))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
