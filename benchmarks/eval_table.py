"""The README's quality table: the shipped models and the classical baselines, scored alike.

Writes benchmarks/results/eval_table.json (every number, per image) and eval_table.md (the table).
Enhancement rows: LOL-v1 eval15, full 600x400, RGB PSNR / SSIM (11x11 Gaussian), no GT-mean
(the GT-mean oracle in its own, labelled columns). SR rows: x2 on eval15's normal-light images,
blurred with a random kernel in {3,5,7,9} (fixed seed) and downscaled x2.

    .venv/bin/python benchmarks/eval_table.py                      # shipped models + baselines
    .venv/bin/python benchmarks/eval_table.py --model runs/x/model.fp16.onnx --paper
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from deepfusionnet.commands.eval import open_model
from deepfusionnet.runtime.artifacts import shipped_path
from deepfusionnet.runtime.measure.baselines import BASELINES
from deepfusionnet.runtime.measure.evaluate import evaluate
from deepfusionnet.runtime.images import atomic_write_bytes
from deepfusionnet.runtime.measure.pairs import find_pairs
from portable_paths import portable  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "lol-v1" / "eval15"
OUT = REPO / "benchmarks" / "results"
PAPER_CLAIM = "seed paper: 26.30 dB / 0.928 on its own 19-image 256x256 split (not comparable)"


def _shipped_backend(name: str) -> str:
    # The FP32 ONNX on ONNX Runtime once exported; until then the PyTorch weights.
    return "onnxruntime" if shipped_path(name, "onnx").is_file() else "torch"


def run_row(model: str, backend: str, pairs, protocol: str, tta: int = 1) -> dict:
    t0 = time.perf_counter()
    m, desc = open_model(model, backend, tta=tta)
    try:
        res = evaluate(m, pairs, protocol)
    finally:
        m.close()
    row = {**desc, **res.to_json(), "wall_s": round(time.perf_counter() - t0, 1)}
    if row.get("artifact"):
        row["artifact"] = portable(row["artifact"])
    gm = row["gt_mean"] or {}
    print(f"{model + (f' x{tta}' if tta > 1 else ''):<24} {protocol:<6} {row['psnr']:6.2f} dB  {row['ssim']:.4f}"
          + (f"   GT-mean {gm['psnr']:.2f} / {gm['ssim']:.4f}" if gm else ""), file=sys.stderr)
    return row


def markdown(rows: list[dict], sr_rows: list[dict], images: int) -> str:
    def num(v, f):
        return format(v, f) if v is not None else "–"

    lines = [f"LOL-v1 eval15 ({images} pairs), full resolution, RGB PSNR / SSIM (11x11 Gaussian, σ 1.5), "
             "no GT-mean. GT-mean columns: output rescaled to the ground truth's gray mean (an oracle, "
             "shown only for comparison with papers that report it).", "",
             "| Method | Backend | Protocol | PSNR (dB) | SSIM | GT-mean PSNR | GT-mean SSIM |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gm = r["gt_mean"] or {}
        lines.append(f"| {r['label']} | {r['backend']} ({r['precision']}) | {r['protocol']} "
                     f"| {num(r['psnr'], '.2f')} | {num(r['ssim'], '.3f')} "
                     f"| {num(gm.get('psnr'), '.2f')} | {num(gm.get('ssim'), '.3f')} |")
    if sr_rows:
        lines += ["", "x2 SR on eval15's normal-light images (Gaussian blur k∈{3,5,7,9}, seed 0, "
                  "x2 INTER_AREA down), RGB, no border crop:", "",
                  "| Method | Backend | PSNR (dB) | SSIM |", "|---|---|---|---|"]
        for r in sr_rows:
            lines.append(f"| {r['label']} | {r['backend']} ({r['precision']}) | {num(r['psnr'], '.2f')} "
                         f"| {num(r['ssim'], '.3f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help=f"paired data (default {DATA})")
    ap.add_argument("--model", action="append", default=[], metavar="MODEL[@BACKEND]",
                    help="extra model rows (artifact files; @backend to pick one), repeatable")
    ap.add_argument("--no-shipped", action="store_true", help="leave out the shipped models")
    ap.add_argument("--no-sr", action="store_true", help="leave out the SR table")
    ap.add_argument("--no-tta", action="store_true",
                    help="leave out the shipped models' self-ensemble rows (dfn eval --tta 8)")
    ap.add_argument("--paper", action="store_true", help="add 256x256 (paper protocol) rows for the models")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    pairs = find_pairs(args.data)
    models = [] if args.no_shipped else [("deepfusionnet", _shipped_backend("deepfusionnet"))]
    models += [tuple(m.split("@", 1)) if "@" in m else (m, "auto") for m in args.model]
    rows = []
    for model, backend in models:
        for protocol in ("lol", "paper") if args.paper else ("lol",):
            rows.append({"label": model, **run_row(model, backend, pairs, protocol)})
    if not (args.no_shipped or args.no_tta):  # a quality mode at 8x the work, in a row of its own
        rows.append({"label": "deepfusionnet, self-ensemble x8 (`--tta`, 8x the work)",
                     **run_row("deepfusionnet", models[0][1], pairs, "lol", tta=8)})
    for name, (_, scale, desc) in BASELINES.items():
        if scale == 1:
            row = run_row(f"baseline:{name}", "auto", pairs, "lol")
            rows.append({"label": f"baseline:{name} ({desc})", **row})
    sr_rows = []
    if not args.no_sr:
        if not args.no_shipped:
            sr_backend = _shipped_backend("deepfusionnet-sr")
            row = run_row("deepfusionnet-sr", sr_backend, pairs, "lol")
            sr_rows.append({"label": "deepfusionnet-sr", **row})
            if not args.no_tta:
                row = run_row("deepfusionnet-sr", sr_backend, pairs, "lol", tta=8)
                sr_rows.append({"label": "deepfusionnet-sr, self-ensemble x8 (`--tta`)", **row})
        for name, (_, scale, desc) in BASELINES.items():
            if scale == 2:
                row = run_row(f"baseline:{name}", "auto", pairs, "lol")
                sr_rows.append({"label": f"baseline:{name}", **row})

    record = {"data": portable(args.data), "images": len(pairs),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": platform.platform(), "paper_claim": PAPER_CLAIM, "enhance": rows, "sr": sr_rows}
    atomic_write_bytes(args.out / "eval_table.json", json.dumps(record, indent=1, default=str).encode())
    atomic_write_bytes(args.out / "eval_table.md", markdown(rows, sr_rows, len(pairs)).encode())
    print(f"wrote {args.out / 'eval_table.md'} and eval_table.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
