#!/usr/bin/env bash
# Train params/pipeline_check.yaml's six cells (fast/loader x seeds 0-2) in-process and draw both
# pipelines' curves. Usage: benchmarks/pipeline_check.sh [WEIGHTS_FILE] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${1:-../shared/weights/mobilenetv2_100.tv_in1k_qnnpack_dequant.pth}
out=${2:-outputs/pipeline_check}
set_weights=()
[ -f "$weights" ] && set_weights=(--set "pretrained_file=$(realpath "$weights")")
for pipeline in fast loader; do
  for seed in 0 1 2; do
    .venv/bin/slotlib train params/pipeline_check.yaml --cell "pipeline${pipeline}_seed${seed}" \
      --out "$out/${pipeline}_seed${seed}" --no-progress "${set_weights[@]}"
  done
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
from slotlib.classify.plots import compare_curves
out = Path(sys.argv[1])
runs = {d.name: d for d in sorted(out.iterdir()) if (d / "history.csv").exists()}
compare_curves(runs).savefig("benchmarks/pipeline_check.png", dpi=110)
by_pipeline = {}
for name, d in runs.items():
    m = json.loads((d / "metrics.json").read_text())
    by_pipeline.setdefault(name.split("_")[0], []).append(m)
    print(f"{name:14s} best val {m['best_val_acc']:.4f}  test {m['test_acc']:.4f}  "
          f"train {m['train_images_per_second']:.0f} img/s  wall {m['wall_seconds']:.0f} s")
for pipeline, ms in by_pipeline.items():
    val = [m["best_val_acc"] for m in ms]
    test = [m["test_acc"] for m in ms]
    sd = statistics.stdev if len(ms) > 1 else (lambda _: float("nan"))
    print(f"{pipeline:8s} n={len(ms)}  best val {statistics.mean(val):.4f} ± {sd(val):.4f}  "
          f"test {statistics.mean(test):.4f} ± {sd(test):.4f}")
PY
