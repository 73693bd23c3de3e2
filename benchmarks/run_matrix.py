"""The full benchmark matrix in one command: JSON, a Markdown table and a latency-vs-eval15-PSNR plot.

    python benchmarks/run_matrix.py            # full matrix (about 15 min on a 2-core x86 CPU)
    python benchmarks/run_matrix.py --quick    # 600x400 only, fewer runs, 5 eval15 images

Models: the enhancer, the SR model, enhancer + SR chain, half-resolution enhancer + SR. Backends:
PyTorch eager, ONNX Runtime, OpenVINO, ``auto``, and ORT-CUDA / TensorRT (rows say "not measured"
without CUDA; the same script measures them unchanged where CUDA exists). Precisions FP32, FP16, BF16,
INT8. Sizes 600x400, 640x480, 1280x720.

The FP32/FP16/INT8 ONNX graphs are made with the project's own export code (``dfn export``) into
``--artifacts`` (default ``benchmarks/results/artifacts``), so the numbers are those of the shipped
pipeline. Outputs go to ``--out`` (default ``benchmarks/results``): ``matrix.json``, ``matrix.md``,
``frontier.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from portable_paths import portable_tree  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = ["deepfusionnet", "deepfusionnet-sr", "deepfusionnet+deepfusionnet-sr", "fast:deepfusionnet+deepfusionnet-sr"]
BACKENDS = ["torch", "onnxruntime", "openvino", "auto", "ort-cuda", "ort-trt"]  # ort-trt: ORT's TensorRT EP
PRECISIONS = ["fp32", "fp16", "bf16", "int8"]
SIZES = ["600x400", "640x480", "1280x720"]
EVAL15 = REPO.parent / "shared" / "data" / "lol-v1" / "eval15"


def export_artifacts(folder: Path, names: list[str], precisions: list[str], log) -> None:
    """FP32/FP16/INT8 ONNX for each shipped model, through ``dfn export`` (skipped when present)."""
    from deepfusionnet.cli import main as dfn

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        for prec in precisions:
            if prec == "bf16":
                continue  # BF16 is an OpenVINO run-time hint on the FP32 graph, not a file
            out = folder / (f"{name}.onnx" if prec == "fp32" else f"{name}.{prec}.onnx")
            if out.is_file() and up_to_date(out, name):
                continue
            log(f"exporting {out.name}")
            try:
                rc = dfn(["export", name, "--precision", prec, "--dynamic", "--output", str(out)])
            except SystemExit as exc:  # argparse rejected the flags
                rc = exc.code
            if rc != 0 or not out.is_file():
                log(f"dfn export {name} --precision {prec} failed (exit {rc}); trying the export module directly")
                try:
                    export_with_module(name, prec, out)
                except Exception as exc:  # noqa: BLE001 - any failure only drops this artifact's rows
                    log(f"export of {out.name} failed ({type(exc).__name__}: {exc}); its rows are skipped")


def up_to_date(path: Path, name: str) -> bool:
    """Whether ``path`` was exported from the current shipped weights (they are refreshed after training)
    by the current export code (a change to it, e.g. which nodes INT8 keeps float, changes the graph)."""
    import deepfusionnet.export as export_pkg
    from deepfusionnet.runtime.artifacts import read_sidecar, shipped_path
    from deepfusionnet.runtime.measure.auto import file_sha256

    try:
        recorded = read_sidecar(path).extra.get("source_weights_sha256")
        code = max(f.stat().st_mtime for f in Path(export_pkg.__file__).parent.glob("*.py"))
        return recorded == file_sha256(shipped_path(name, "weights")) and path.stat().st_mtime > code
    except Exception:  # noqa: BLE001 - unreadable sidecar or weights: export again
        return False


def export_with_module(name: str, prec: str, out: Path) -> None:
    """Fallback while ``dfn export`` is unavailable: the same export functions, no parity check.

    The sidecar says so ("passed": null), so ``--backend auto`` never picks these variants.
    """
    from deepfusionnet.export import onnx as dfn_onnx
    from deepfusionnet.export import precision as dfn_precision
    from deepfusionnet.export.sidecar import set_metadata, write_sidecar
    from deepfusionnet.runtime.artifacts import SHIPPED

    net, model_name, src = dfn_onnx.load_source(name)
    exposure = src.exposure.to_json() if src.exposure is not None else None
    proto = dfn_onnx.onnx_from_torch(net)
    scale, multiple, _ = SHIPPED[model_name]
    if prec == "fp16":
        proto, kept = dfn_precision.fp16_from_onnx(proto)[:2]
    elif prec == "int8":
        paths = dfn_precision.calibration_images(EVAL15.parent / "train" / ("high" if scale > 1 else "low"), 32)
        reader = dfn_precision.calibration_reader(paths, "input", 600, 400, multiple)
        proto, kept = dfn_precision.int8_from_onnx(proto, reader)[:2]
    else:
        kept = []
    set_metadata(proto, model_name, scale, multiple, prec, exposure)
    dfn_onnx.save(proto, out)
    from deepfusionnet.runtime.measure.auto import file_sha256

    write_sidecar(out, {"source_weights_sha256": file_sha256(src.path), "model": model_name, "scale": scale, "multiple": multiple, "precision": prec,
                        "kept_float": kept, "parity": {"passed": None, "note": "benchmarks/run_matrix.py fallback "
                                                       "export; not parity-checked"}})


def skip_rule(full: bool):
    """Rows left out to fit the time budget (they appear in the table with the reason)."""
    def skip(model: str, backend: str, precision: str, size: tuple[int, int]):
        if backend == "torch" and size == (1280, 720) and "+" in model and full:
            return "skipped: PyTorch eager at 1280x720 for chains (time budget; see the 600x400 ratio)"
        return None
    return skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="600x400 only, 3 runs, 5 eval15 images")
    p.add_argument("--runs", type=int, default=None, help="timed runs per row (default 5; --quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--sizes", default=None, help="default 600x400,640x480,1280x720 (--quick: 600x400)")
    p.add_argument("--eval15", default=str(EVAL15), help="paired folder for the quality column")
    p.add_argument("--quality-limit", type=int, default=None, help="eval15 images per row (default all 15; --quick 5)")
    p.add_argument("--artifacts", default=str(HERE / "results" / "artifacts"))
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)

    from deepfusionnet.runtime.measure.bench import bench
    from deepfusionnet.runtime.measure.plan import parse_model_spec
    from deepfusionnet.runtime.measure.plot import plot_frontier
    from deepfusionnet.runtime.measure.report import machine_markdown, markdown_table
    from deepfusionnet.runtime.sizes import parse_size
    from deepfusionnet.runtime.measure.pairs import find_pairs

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    models = [m for m in args.models.split(",") if m]
    sizes = [parse_size(s) for s in (args.sizes or ("600x400" if args.quick else ",".join(SIZES))).split(",")]
    runs = args.runs or (3 if args.quick else 5)
    limit = args.quality_limit or (5 if args.quick else None)
    precisions = args.precisions.split(",")
    names = sorted({s for m in models for s in parse_model_spec(m).stages})
    artifacts = Path(args.artifacts)
    export_artifacts(artifacts, names, precisions, log)
    pairs = None
    if Path(args.eval15).is_dir():
        pairs = find_pairs(args.eval15)[: limit or None]
    else:
        log(f"{args.eval15} not found: no quality column")
    t0 = time.time()
    result = bench(models, args.backends.split(","), precisions, sizes, runs=runs, warmup=args.warmup,
                   artifacts=artifacts, quality_pairs=pairs, skip=skip_rule(not args.quick), log=log)
    cmd = " ".join(["python benchmarks/run_matrix.py", *(sys.argv[1:] if argv is None else argv)])
    result["settings"].update({"command": cmd,
                               "wall_s": round(time.time() - t0, 1), "quality_set": str(args.eval15)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "matrix"
    (out / f"{stem}.json").write_text(json.dumps(portable_tree(result), indent=2, default=str) + "\n")
    md = [f"# Benchmark matrix ({'quick' if args.quick else 'full'})\n", machine_markdown(result["machine"]),
          f"\nCommand: `{result['settings']['command']}`; {runs} timed runs + {args.warmup} warm-up per row, "
          f"round-robin per (model, size); eval15 quality on {len(pairs) if pairs else 0} images; "
          f"wall time {result['settings']['wall_s']} s. GPU/Jetson rows: not measured unless a row says otherwise.\n\n",
          markdown_table(result)]
    (out / f"{stem}.md").write_text("".join(md))
    if pairs:
        plot_frontier(result, out / f"{stem}-frontier.png", size="600x400")
    log(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}" + (f", {out / (stem + '-frontier.png')}" if pairs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
