"""A finished cell's best weights evaluated at several input sizes: validation and test accuracy,
plain and with test-time augmentation, as a Markdown table. Choose ``eval_size`` on the validation
columns; the test columns are for the record.

    .venv/bin/python benchmarks/eval_sizes.py outputs/cpu_recipe/scouter_seed0 --sizes 64 72 80 88 --tta dihedral

The cell is opened as trained (``slotlib.classify.explain.open_run``: its parameters, data and split);
only the validation and test loaders are rebuilt at each size.
"""

from __future__ import annotations

import argparse
import time

from slotlib.classify.experiment import split_loaders
from slotlib.classify.explain import open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 72, 80, 88, 96])
    parser.add_argument("--tta", default="dihedral", choices=["none", "flip", "dihedral"],
                        help="the views of the extra columns; none leaves them out (8 views cost 8 evaluations)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    exp = open_run(args.run_dir, device=args.device)
    trained = exp.config.data
    print(f"{args.run_dir}: trained at {trained.image_size} px (eval_size {trained.eval_size}); its best weights")
    print()
    ttas = ("none",) if args.tta == "none" else ("none", args.tta)
    print("| eval size | val | test |" + (f" val, {args.tta} | test, {args.tta} |" if len(ttas) > 1 else ""))
    print("| --- | --- | --- |" + (" --- | --- |" if len(ttas) > 1 else ""))
    for size in args.sizes:
        start = time.perf_counter()
        exp.loaders = split_loaders(exp.config, exp.data, exp.splits, exp.device, exp.mean, exp.std,
                                    eval_size=size)
        row = [exp.evaluate(split, tta=tta)["acc"] for tta in ttas for split in ("val", "test")]
        print(f"| {size} px | " + " | ".join(f"{100 * a:.2f}%" for a in row) + " |"
              + f" <!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
