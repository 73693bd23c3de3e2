"""A benchmark result as Markdown: the machine line and the table of rows."""

from __future__ import annotations


def fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def percent(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown_table(result: dict) -> str:
    """The rows as a Markdown table (not-measured and skipped rows keep their reason)."""
    head = ("| model | size | backend | precision | ran as | p50 ms | p90 ms | p99 ms | infer p50 ms | fps "
            "| × eager FP32 | GFLOP/s | % floor | eval15 PSNR | Δ dB vs FP32 | load s | mem MB | status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        prec = r["precision"] if r["backend"] != "auto" else f"{r['precision']} ({r['picked']})"
        status = "ok" if r["status"] == "ok" else r["status"]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['backend']} | {prec} | {r.get('ran_as') or '–'} "
            f"| {fmt(r['p50_ms'])} "
            f"| {fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['infer_p50_ms'])} | {fmt(r['fps'], 2)} "
            f"| {fmt(r['speedup_vs_torch'], 2)} | {fmt(r.get('gflops'), 0)} "
            f"| {percent(r.get('floor_fraction'))} "
            f"| {fmt(r['psnr_eval15'], 2)} | {fmt(r['psnr_delta_db'], 3)} | {fmt(r['load_s'], 2)} "
            f"| {fmt(r['mem_mb'], 0)} | {status} |")
    return "\n".join(lines) + "\n"


def machine_markdown(machine: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    return (f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, ISA: {' '.join(machine.get('isa') or [])}; "
            f"GPU: {', '.join(machine['gpu']) if machine.get('gpu') else 'none'}; Jetson: {machine.get('jetson') or 'no'}; "
            f"{machine.get('os')}; Python {machine.get('python')}; {libs}.\n")
