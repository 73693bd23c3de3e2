"""Precision table for docs/export.md: every precision x PSNR vs ground truth x PSNR vs PyTorch x size.

Exports the shipped enhancer and SR weights in FP32, FP16 and INT8 (dynamic H/W, default export
settings), runs each on ONNX Runtime CPU over the full eval15 set and compares it with PyTorch FP32.
The SR model is scored as ``dfn eval`` scores it: eval15's normal-light images blurred (k in 3..9) and
downscaled 2x as input, the originals as ground truth.

    .venv/bin/python benchmarks/export_table.py            # writes benchmarks/results/export_table.{json,md}

Each export's wall time is recorded beside its parity (the INT8/FP16 ratio is measured in one run on
one machine, so it compares like with like).
    .venv/bin/python benchmarks/export_table.py --models deepfusionnet --keep runs/export
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from portable_paths import portable  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lol-v1" / "eval15"
DEFAULT_CALIB = REPO.parent / "shared" / "data" / "lol-v1" / "train"


def cached(fn):
    """Memoise a model on its input, so the PyTorch reference runs once per image for all precisions."""
    memo: dict[str, np.ndarray] = {}

    def run(x: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(x.tobytes()).hexdigest() + str(x.shape)
        if key not in memo:
            memo[key] = fn(x)
        return memo[key]

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="eval pairs (default: LOL-v1 eval15)")
    ap.add_argument("--models", nargs="+", default=["deepfusionnet", "deepfusionnet-sr"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    ap.add_argument("--calib-dir", type=Path, default=DEFAULT_CALIB,
                    help="LOL-style train folder: the enhancer calibrates on low/, the SR model on high/")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where export_table.{json,md} go")
    ap.add_argument("--keep", type=Path, default=None, help="keep the exported graphs in this folder")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from deepfusionnet.export.pipeline import ExportOptions, export_model
    from deepfusionnet.runtime.measure.compare import run_parity
    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.runtime.measure.pairs import find_pairs
    from deepfusionnet.train.weights import file_sha256

    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    tmp = tempfile.TemporaryDirectory(prefix="dfn-export-table-")
    work = args.keep or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    opts_thr = {"threads": args.threads} if args.threads else {}
    rows = []
    for model in args.models:
        items = find_pairs(args.data)
        ref_enh = open_enhancer(model, "torch", **opts_thr)
        reference = cached(ref_enh.run_tensor)
        for precision in args.precisions:
            path = work / f"{model}-{precision}.onnx"
            t0 = time.perf_counter()
            calib = args.calib_dir / ("high" if model.endswith("-sr") else "low")
            # the CLI's defaults (conformance gate, lint, parity on the shipped samples), so export_s is
            # what a user waits for; the table's own parity below is over all of eval15
            export_model(model, path, ExportOptions(precision=precision, calib_dir=calib, threads=args.threads),
                         progress=say)
            export_s = time.perf_counter() - t0
            cand = open_enhancer(str(path), "onnxruntime", **opts_thr)
            report = run_parity(reference, cand.run_tensor, items, precision, f"{model} [torch fp32]",
                                f"{path.name} [onnxruntime]", progress=say, scale=cand.scale)
            cand.close()
            for line in report.lines():
                say(line)
            s = report.summary()
            rows.append({
                "model": model, "precision": precision, "file_mb": round(path.stat().st_size / 1e6, 2),
                "gt_psnr_torch": s.get("gt_psnr_reference"), "gt_psnr": s.get("gt_psnr_candidate"),
                "gt_drop": s.get("gt_drop"), "psnr_vs_torch_min": s["psnr_min"], "psnr_vs_torch_mean": s["psnr_mean"],
                "ssim_vs_torch_min": s["ssim_min"], "max_abs": s["max_abs"], "passed": report.passed,
                "images": s["images"], "export_s": round(export_s, 1),
            })
        weights_sha = file_sha256(ref_enh.artifact.path)
        for r in rows:
            if r["model"] == model:
                r["weights_sha256"] = weights_sha
        ref_enh.close()

    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"data": portable(args.data), "backend": "onnxruntime CPU", "reference": "PyTorch FP32 (same weights)",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    from deepfusionnet.runtime.measure.compare import _finite

    (args.out / "export_table.json").write_text(json.dumps(_finite(doc), indent=2) + "\n")
    (args.out / "export_table.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    def db(v) -> str:
        return "-" if v is None else ("identical" if v == float("inf") else f"{v:.2f}")

    lines = ["| model | precision | PSNR vs GT (dB) | PyTorch FP32 vs GT (dB) | PSNR vs PyTorch, worst / mean (dB) | "
             "max abs err | file (MB) | tolerance | export s | x FP16 export |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fp16 = {r["model"]: r["export_s"] for r in rows if r["precision"] == "fp16"}
    for r in rows:
        ratio = f"{r['export_s'] / fp16[r['model']]:.2f}" if fp16.get(r["model"]) else "-"
        lines.append(f"| {r['model']} | {r['precision'].upper()} | {db(r['gt_psnr'])} | {db(r['gt_psnr_torch'])} | "
                     f"{db(r['psnr_vs_torch_min'])} / {db(r['psnr_vs_torch_mean'])} | {r['max_abs']:.2g} | "
                     f"{r['file_mb']:.1f} | {'pass' if r['passed'] else 'FAIL'} | {r['export_s']:.1f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
