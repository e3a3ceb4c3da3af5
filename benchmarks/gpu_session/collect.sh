#!/bin/bash
# Every call after the start: what the runs have written so far, packed into $OUT.
export PYTHONPATH=/tmp/site:$PWD
tail -n 25 /tmp/d/logs/main.log
for split in random torchgeo; do
  [ -d /tmp/d/runs/$split ] && python3 -m slotlib.cli status /tmp/d/runs/$split
  for f in /tmp/d/runs/$split/seed*/history.csv; do [ -f $f ] && echo "$f: $(tail -1 $f)"; done
done
tail -2 /tmp/d/logs/nvsmi.csv 2>/dev/null
cd /tmp/d && tar czf $OUT/gpu_results.tgz --ignore-failed-read *.json logs \
  $(find runs -name metrics.json -o -name history.csv -o -name params.yaml) 2>/dev/null
ls -la $OUT
