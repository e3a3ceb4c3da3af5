"""Does the mask softmax's temperature blur the alpha masks? Short runs with the alpha logits divided by T.

    .venv/bin/python benchmarks/discovery_temperature_probe.py T OUT [KEY=VALUE ...]
    .venv/bin/python benchmarks/discovery_temperature_probe.py 0.5 outputs/od_probe/temp05_3k_seed0 \\
        black_steps=0 eval_masks=alpha steps=3000 decay_steps=6000 eval_every=500
    .venv/bin/python benchmarks/discovery_temperature_probe.py --paired T RUN_A RUN_B

Starts from ``params/object_discovery.yaml``'s base, overridden by ``KEY=VALUE``, and trains one run folder
with ``slotlib.discover.fit.fit``, the masks being ``softmax(alpha / T)`` over slots in training, evaluation
and the figures alike (T = 1 is the model as it is). With a learned decoder a fixed T only rescales the
alpha logits, which at T < 1 start sharper and, under Adam, move 1/T times as fast; a probe, not a parameter.
``--paired T RUN_A RUN_B`` is ``discovery_paired.py RUN_A RUN_B`` with RUN_B's masks at temperature T (RUN_A's
at 1), for a run this script trained.
Results: docs/results.md, "What the grey recipe's alpha masks get wrong".
"""

from __future__ import annotations

import sys
from pathlib import Path

import discovery_paired   # this folder's: run as a script, it is on sys.path
from discovery_black_probe import base_config

import slotlib.discover.fit as discovery
import slotlib.discover.model as model_module


def paired(temperature: float, run_a: str, run_b: str) -> None:
    load, evaluate, at = discovery_paired.load, discovery_paired.evaluate, {}

    def load_b(run: Path):   # remember which model is RUN_B's
        cfg, model = load(run)
        at[id(model)] = temperature if run == Path(run_b) else 1.0
        return cfg, model

    def evaluate_at(model, *args, **kwargs):
        compose = model_module.compose
        model_module.compose = lambda rgb, alpha: compose(rgb, alpha / at[id(model)])
        try:
            return evaluate(model, *args, **kwargs)
        finally:
            model_module.compose = compose

    discovery_paired.load, discovery_paired.evaluate = load_b, evaluate_at
    sys.argv = [sys.argv[0], run_a, run_b]
    discovery_paired.main()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--paired":
        return paired(float(sys.argv[2]), sys.argv[3], sys.argv[4])
    if len(sys.argv) < 3:
        sys.exit("usage: discovery_temperature_probe.py T OUT [KEY=VALUE ...] | --paired T RUN_A RUN_B")
    temperature, out = float(sys.argv[1]), sys.argv[2]
    cfg = base_config(sys.argv[3:])
    compose = model_module.compose
    model_module.compose = lambda rgb, alpha: compose(rgb, alpha / temperature)   # SlotAutoEncoder.forward's
    discovery.fit(cfg, out, progress=False, echo=print)


if __name__ == "__main__":
    main()
