"""How many grid cells fit one GPU: K `slotlib bench` processes at once, their timed steps overlapping.

Each process loads the data, builds its model, warms up, then waits (``--ready-dir``/``--peers``)
until all K are ready, so the K timed windows overlap as K cells of ``slotlib grid --jobs K
--devices 0`` would. Reported per K: the total images/s (sum over processes), the slowest
process, the peak memory one process allocated, and the whole GPU's memory in use once all K
had warmed up (CUDA contexts included).

    python benchmarks/cells_per_gpu.py --k 1 2 4 8 --json out.json -- \\
        --image-size 224 --device cuda --pipeline fast --head scouter --batch-size 32 --steps 100 --warmup 20

Everything after ``--`` goes to every `slotlib bench` process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def run(k: int, bench_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"slotlib-peers{k}-") as ready:
        cmd = [sys.executable, "-m", "slotlib.cli", "bench", *bench_args, "--json", "--ready-dir", ready,
               "--peers", str(k)]
        start = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
        outs = [p.communicate() for p in procs]
        wall = time.perf_counter() - start
    failed = [(p.returncode, err.strip().splitlines()[-1:] or [""]) for p, (_, err) in zip(procs, outs)
              if p.returncode != 0]
    if failed:
        return {"k": k, "error": f"{len(failed)} of {k} processes failed: exit {failed[0][0]}: {failed[0][1][0]}"}
    results = [json.loads(out)["results"][0] for out, _ in outs]
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        return {"k": k, "error": f"{len(errors)} of {k} runs failed: {errors[0]}"}
    rates = [r["images_per_second"] for r in results]
    return {"k": k, "total_images_per_second": round(sum(rates), 1), "slowest_images_per_second": round(min(rates), 1),
            "per_process": [round(r, 1) for r in rates],
            "peak_memory_mb_per_process": max(r["peak_memory_mb"] for r in results),
            "device_memory_used_mb": max(r["device_memory_used_mb"] or 0 for r in results),
            "wall_seconds": round(wall, 1), "device": json.loads(outs[0][0])["device"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="processes at once (default 1 2 4 8)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the arguments of `slotlib bench`")
    args = parser.parse_args()
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    rows = []
    print(f"{'K':>3s} {'total img/s':>12s} {'slowest':>9s} {'peak MB/proc':>13s} {'GPU in use MB':>14s}", flush=True)
    for k in args.k:
        row = run(k, bench_args)
        rows.append(row)
        if row.get("error"):
            print(f"{k:3d} FAILED: {row['error']}", flush=True)
        else:
            print(f"{k:3d} {row['total_images_per_second']:12.0f} {row['slowest_images_per_second']:9.0f} "
                  f"{row['peak_memory_mb_per_process']:13.0f} {row['device_memory_used_mb']:14.0f}", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"bench_args": bench_args, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
