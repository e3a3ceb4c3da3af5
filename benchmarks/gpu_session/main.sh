#!/bin/bash
# Device call 2, started with setsid: unpack the data, smoke-test, bench, cells per GPU, then the accuracy runs.
set -u
REPO=$1
cd "$REPO"
export PYTHONPATH=/tmp/site:$REPO EUROSAT_ROOT=/tmp/d/data SLOTLIB_CACHE=/tmp/d/cache PYTHONUNBUFFERED=1
L=/tmp/d/logs
W=/tmp/d/weights/mobilenetv2_100.tv_in1k_qnnpack_dequant.pth
P=params/gpu_reference_mobilenetv2.yaml
stamp() { echo "[$(date +%T)] $*"; }
(while true; do nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader >> $L/nvsmi.csv; sleep 15; done) &
stamp unpack
cat /tmp/d/eurosat.part.aa "$REPO/.gpu/b/eurosat.part.ab" | xz -d -T8 | tar -x -C /tmp/d/data
find /tmp/d/data/eurosat/2750 -name '*.jpg' | wc -l
python3 -c "from slotlib.data.eurosat import load_eurosat; ds = load_eurosat('/tmp/d/data'); print(len(ds.labels), 'tiles, fingerprint', ds.fingerprint)"
stamp smoke
python3 -m slotlib.cli train $P --cell seed0 --out /tmp/d/runs/smoke --no-progress --set pretrained_file=$W \
  --set per_class_limit=40 --set stage1_epochs=1 --set stage2_epochs=1 --set explain_tiles=20 > $L/smoke.log 2>&1
echo "smoke exit $?"; tail -2 $L/smoke.log
stamp bench scouter
timeout 420 python3 -m slotlib.cli bench --image-size 224 --device cuda --pipeline reference fast compiled \
  --head scouter --batch-size 32 256 --steps 30 --warmup 10 --repeats 3 --json > /tmp/d/bench_scouter.json 2> $L/bench_scouter.err
echo "exit $?"; grep -v Warning $L/bench_scouter.err | tail -8
stamp bench slot
timeout 300 python3 -m slotlib.cli bench --image-size 224 --device cuda --pipeline reference fast \
  --head slot --batch-size 32 256 --steps 30 --warmup 10 --repeats 3 --json > /tmp/d/bench_slot.json 2> $L/bench_slot.err
echo "exit $?"; grep -v Warning $L/bench_slot.err | tail -6
stamp cells per gpu
timeout 300 python3 benchmarks/cells_per_gpu.py --k 1 2 4 8 --json /tmp/d/cells_per_gpu.json -- --image-size 224 \
  --device cuda --pipeline fast --head scouter --batch-size 32 --steps 60 --warmup 20 --repeats 3 > $L/cells.log 2>&1
cat $L/cells.log
stamp accuracy runs
pids=()
for s in 0 1 2; do
  python3 -m slotlib.cli train $P --cell seed$s --out /tmp/d/runs/random/seed$s --no-progress \
    --set pretrained_file=$W > $L/random-seed$s.log 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
stamp all done
