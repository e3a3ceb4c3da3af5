#!/bin/bash
# The same protocol on torchgeo's split, started with setsid when the random-split runs leave room.
REPO=$1; cd "$REPO"
export PYTHONPATH=/tmp/site:$REPO EUROSAT_ROOT=/tmp/d/data SLOTLIB_CACHE=/tmp/d/cache PYTHONUNBUFFERED=1
for s in 0 1 2; do
  python3 -m slotlib.cli train params/gpu_reference_mobilenetv2.yaml --cell seed$s --out /tmp/d/runs/torchgeo/seed$s \
    --no-progress --set pretrained_file=/tmp/d/weights/mobilenetv2_100.tv_in1k_qnnpack_dequant.pth \
    --set split=/tmp/d/torchgeo > /tmp/d/logs/torchgeo-seed$s.log 2>&1 &
done
wait
