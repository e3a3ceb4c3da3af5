#!/usr/bin/env bash
# Train params/pipeline_check.yaml's four cells (fast/loader x seeds 0/1) in-process and draw both
# pipelines' curves. Usage: benchmarks/pipeline_check.sh [WEIGHTS_FILE] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${1:-../shared/weights/mobilenetv2_100.tv_in1k_qnnpack_dequant.pth}
out=${2:-outputs/pipeline_check}
set_weights=()
[ -f "$weights" ] && set_weights=(--set "pretrained_file=$(realpath "$weights")")
for pipeline in fast loader; do
  for seed in 0 1; do
    .venv/bin/slotlib train params/pipeline_check.yaml --cell "pipeline${pipeline}_seed${seed}" \
      --out "$out/${pipeline}_seed${seed}" --no-progress "${set_weights[@]}"
  done
done
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
from slotlib.plots import compare_curves
out = Path(sys.argv[1])
runs = {d.name: d for d in sorted(out.iterdir()) if (d / "history.csv").exists()}
compare_curves(runs).savefig("benchmarks/pipeline_check.png", dpi=110)
for name, d in runs.items():
    m = json.loads((d / "metrics.json").read_text())
    print(f"{name:14s} best val {m['best_val_acc']:.4f}  test {m['test_acc']:.4f}  "
          f"train {m['train_images_per_second']:.0f} img/s  wall {m['wall_seconds']:.0f} s")
PY
