"""``slotlib bench``'s report: speed-ups against the reference and one text line per measurement."""

from __future__ import annotations

from typing import Any


def speedups(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per 'head/batch size': each pipeline's images/s over the reference's."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        ref = next((q for q in results if q["pipeline"] == "reference" and q["head"] == r["head"]
                    and q["batch_size"] == r["batch_size"] and not q.get("error")), None)
        if ref is not None and r["pipeline"] != "reference" and not r.get("error"):
            out.setdefault(f"{r['head']}/{r['batch_size']}", {})[r["pipeline"]] = (
                r["images_per_second"] / ref["images_per_second"])
    return out


def format_bench(result: dict[str, Any]) -> str:
    lines = [f"{result['backbone']}, {result['image_size']} px, stage {result['stage']}, {result['steps']} steps x "
             f"{result['repeats']} after {result['warmup']} warm-up, on {result['device']}"
             + (f", {result['peers']} processes at once" if result.get("peers", 1) > 1 else ""),
             f"{'head':8s} {'batch':>5s} {'pipeline':10s} {'images/s':>18s} {'x ref':>6s} {'peak MB':>9s}  details"]
    gains = result.get("speedups", {})
    for r in result["results"]:
        lines.append(format_result(r, gains.get(f"{r['head']}/{r['batch_size']}", {}).get(r["pipeline"])))
    return "\n".join(lines)


def format_result(r: dict[str, Any], gain: float | None = None) -> str:
    """One run's line of the table: head, batch size, pipeline, images/s, ratio to the reference, memory."""
    where = f"{r['head']:8s} {r['batch_size']:5d} {r['pipeline']:10s}"
    if r.get("error"):
        return f"{where} FAILED: {r['error']}"
    details = f"{r['precision']}, data from {r['data_source']}"
    if r["workers"]:
        details += f", {r['workers']} workers"
    if r["channels_last"]:
        details += ", channels_last"
    if r["compile"]:
        details += ", compiled"
    if r.get("device_memory_used_mb") is not None:
        details += f", GPU in use {r['device_memory_used_mb']:.0f} MB"
    if not r["finite"]:
        details += ", NON-FINITE LOSS"
    rate = f"{r['images_per_second']:.1f} +- {r['images_per_second_std']:.1f}"
    line = f"{where} {rate:>18s} {(f'{gain:.2f}x' if gain else '-'):>6s} {r['peak_memory_mb']:9.0f}  {details}"
    prof = r.get("profile")
    if prof:
        line += (f"\n    profile of {prof['steps']} steps: {prof['total_ms'] / prof['steps']:.2f} ms of {prof['clock']} "
                 f"time per step; the operators that took most:")
        line += "".join(f"\n    {op['share']:6.1%} {op['self_ms']:9.2f} ms {op['calls']:6d} calls  {op['name']}"
                        for op in prof["top"])
    return line
