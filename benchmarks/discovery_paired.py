"""Two object-discovery run folders on the same held-out test scenes: per-scene FG-ARI, paired.

    .venv/bin/python benchmarks/discovery_paired.py RUN_A RUN_B [--masks alpha|posterior]

Then, for each run, where it goes wrong (``slotlib.discover.metrics.segmentation_errors``): the share of
object pixels on an object's edge, the share of edge and of interior pixels given to a slot other than the
one holding most of their object, the share of objects whose slot holds another object too, and the masks'
mean per-pixel entropy over slots (nats; 0 is one-hot) on object pixels and on background pixels.

Each folder is a finished run (``params.yaml`` and ``model.pt``, as ``slotlib train`` writes them).
Both are evaluated as training's final test is (``slotlib.discover.metrics.evaluate``, slot samples from
seed 1) on RUN_A's test scenes, which must be RUN_B's too. Prints both means, the mean per-scene
difference B - A, and the Wilcoxon signed-rank test of the differences (two-sided; ties dropped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from slotlib.config import DiscoveryConfig
from slotlib.discover.fit import make_splits
from slotlib.discover.metrics import evaluate, pixel_entropy, segmentation, segmentation_errors, slot_masks
from slotlib.discover.model import SlotAutoEncoder
from slotlib.runs.folder import load_checkpoint, read_params


def load(run: Path) -> tuple[DiscoveryConfig, SlotAutoEncoder]:
    params = read_params(run)
    if params is None:
        raise SystemExit(f"{run} holds no params.yaml: pass a finished run folder")
    cfg = DiscoveryConfig.from_params(params, where=str(run))
    model = SlotAutoEncoder.from_config(cfg)
    model.load_state_dict(load_checkpoint(run / "model.pt"))
    return cfg, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs=2, type=Path)
    parser.add_argument("--masks", choices=("alpha", "posterior"), default="alpha")
    args = parser.parse_args()
    (cfg_a, model_a), (cfg_b, model_b) = load(args.runs[0]), load(args.runs[1])
    scenes = ("image_size", "background", "scenes", "scene_seed", "test_scenes")
    if any(getattr(cfg_a, k) != getattr(cfg_b, k) for k in scenes):
        parser.error(f"the two runs were tested on different scenes: compare {', '.join(scenes)} in their params.yaml")
    test = make_splits(cfg_a).test
    ev_a, ev_b = (evaluate(m, test, seed=1, masks=args.masks) for m in (model_a, model_b))
    a, b = ev_a["per_scene_fg_ari"], ev_b["per_scene_fg_ari"]
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = b[keep] - a[keep]
    p = wilcoxon(diff, zero_method="wilcox").pvalue if np.any(diff != 0) else 1.0
    print(f"{args.masks} FG-ARI on {keep.sum()} test scenes: A {np.mean(a[keep]):.3f}, B {np.mean(b[keep]):.3f}, "
          f"B - A {np.mean(diff):+.3f} (B better on {np.sum(diff > 0)}, worse on {np.sum(diff < 0)}), "
          f"Wilcoxon signed-rank p = {p:.2g}")
    for name, ev in (("A", ev_a), ("B", ev_b)):
        seg = segmentation(slot_masks(ev["output"], args.masks))
        where = ", ".join(f"{k} {v:.3f}" for k, v in segmentation_errors(test.masks, seg).items())
        entropy = pixel_entropy(ev["output"].masks).numpy()             # [N,H,W] nats
        print(f"{name}: {where}; mask entropy {entropy[test.masks > 0].mean():.3f} nats on objects, "
              f"{entropy[test.masks == 0].mean():.3f} on the background")


if __name__ == "__main__":
    main()
