"""How long `dfn export` takes per precision, side by side on one machine: the INT8/FP16 ratio.

Runs the CLI's default export (conformance gate, Polygraphy lint, parity on the shipped samples) of
each model at FP16 and INT8, alternating the two in every round so load changes hit both, and reports
the median wall time over the rounds and the ratio of the medians.

    .venv/bin/python benchmarks/export_time.py                       # writes benchmarks/results/export_time.{json,md}
    .venv/bin/python benchmarks/export_time.py --rounds 3 --models deepfusionnet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CALIB = REPO.parent / "shared" / "data" / "lol-v1" / "train"


def time_export(model: str, precision: str, calib: Path, out: Path) -> tuple[float, dict]:
    from deepfusionnet.export.pipeline import ExportOptions, export_model

    t0 = time.perf_counter()
    result = export_model(model, out, ExportOptions(precision=precision, calib_dir=calib))
    seconds = time.perf_counter() - t0
    parity = result.parity.summary() if result.parity is not None else {}
    info = {"passed": result.passed, "psnr_min": parity.get("psnr_min")}
    if precision == "int8":
        cal = result.info["calibration"]
        info.update(convs_int8=cal["convs_int8"], convs_total=cal["convs_total"],
                    stages_kept_float=cal["fallback"]["stages_kept_float"])
    return seconds, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["deepfusionnet", "deepfusionnet-sr"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calib-dir", type=Path, default=DEFAULT_CALIB,
                    help="LOL-style train folder: the enhancer calibrates on low/, the SR model on high/")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    from deepfusionnet.runtime.measure.machine import machine_info

    rows = []
    with tempfile.TemporaryDirectory(prefix="dfn-export-time-") as tmp:
        for model in args.models:
            calib = args.calib_dir / ("high" if model.endswith("-sr") else "low")
            times: dict[str, list[float]] = {"fp16": [], "int8": []}
            last: dict[str, dict] = {}
            for r in range(args.rounds):
                for precision in ("fp16", "int8"):
                    s, info = time_export(model, precision, calib, Path(tmp, f"{model}.{precision}.onnx"))
                    times[precision].append(s)
                    last[precision] = info
                    print(f"{model} {precision} round {r + 1}: {s:.1f} s", file=sys.stderr, flush=True)
            med = {p: float(np.median(v)) for p, v in times.items()}
            rows.append({"model": model, "fp16_s": [round(v, 1) for v in times["fp16"]],
                         "int8_s": [round(v, 1) for v in times["int8"]], "fp16_median_s": round(med["fp16"], 1),
                         "int8_median_s": round(med["int8"], 1), "ratio": round(med["int8"] / med["fp16"], 2),
                         "int8": last["int8"], "fp16": last["fp16"]})
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": args.rounds,
           "cpus": os.cpu_count(), "machine": machine_info(), "python": platform.python_version(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_time.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    (args.out / "export_time.md").write_text(md + "\n")
    print(md)
    return 0


def markdown(doc: dict) -> str:
    lines = [f"`dfn export` wall time, CLI defaults (gate, lint, parity on the shipped samples), median of "
             f"{doc['rounds']} alternating rounds, {doc['cpus']} CPUs, {doc['created']}.", "",
             "| model | FP16 s (runs) | INT8 s (runs) | INT8 / FP16 | INT8 convs | INT8 parity worst dB |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        q = r["int8"]
        convs = f"{q['convs_int8']} of {q['convs_total']}"
        worst = "-" if q["psnr_min"] is None else f"{q['psnr_min']:.1f}"
        lines.append(f"| {r['model']} | {r['fp16_median_s']} ({', '.join(map(str, r['fp16_s']))}) | "
                     f"{r['int8_median_s']} ({', '.join(map(str, r['int8_s']))}) | {r['ratio']:.2f} | {convs} | "
                     f"{worst} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
