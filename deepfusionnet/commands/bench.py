"""Latency benchmark: models x backends x precisions x sizes, timed side by side, optionally with eval15 quality.

Rows of one model and size are timed round-robin after a warm-up, so their ratios hold on a busy
machine. p50/p90/p99/mean and fps are end to end (decode + pre + inference + post); infer_* is the
inference alone. "× eager FP32" compares with the PyTorch eager row of the same run. "ran as" is the
precision the backend really ran (asked of the compiled model); "% floor" compares the row's conv
GFLOP/s with this machine's measured matmul GFLOP/s in that precision (--floor).

Model specs: a shipped name or file; A+B chains two models; fast:A+B runs A at half size and B
(the 2x SR model) back to full size, as dfn enhance --fast (half:A+B is the older spelling).
Backends: every registered backend (ort-cuda and ort-trt are ONNX Runtime's CUDA and TensorRT
execution providers, tensorrt the native engine backend) and auto.

examples:
  dfn bench deepfusionnet --backend auto --size 600x400 --json
  dfn bench deepfusionnet --backend torch,onnxruntime,openvino --precision fp32,bf16 --runs 10
  dfn bench fast:deepfusionnet+deepfusionnet-sr --backend openvino --quality lol-v1/eval15
"""

from __future__ import annotations

import argparse


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from deepfusionnet.runtime.measure.plan import bench_backends

    p.add_argument("model", nargs="+", help="shipped name, .onnx file, A+B chain or fast:A+B")
    p.add_argument("--backend", default="torch,onnxruntime,openvino,auto",
                   help=f"comma list of {', '.join(bench_backends())} (default: %(default)s)")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, fp16, bf16, int8, or all (default: fp32)")
    p.add_argument("--size", default="600x400", help="comma list of WIDTHxHEIGHT (default: %(default)s)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per row after warm-up (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: every core)")
    p.add_argument("--device", default=None, metavar="auto|cpu|cuda|cuda:N",
                   help="where the torch rows run (default: cpu); the other backends pick their own device")
    p.add_argument("--artifacts", metavar="DIR", default=None,
                   help="folder holding NAME.onnx / NAME.fp16.onnx / NAME.int8.onnx to use for shipped names")
    p.add_argument("--quality", metavar="DIR", default=None,
                   help="paired folder (e.g. lol-v1/eval15) to add PSNR/SSIM per row")
    p.add_argument("--quality-limit", type=int, default=None, help="score only the first N pairs")
    p.add_argument("--plot", metavar="FILE", default=None, help="write latency vs PSNR plot (needs --quality)")
    p.add_argument("--floor", choices=("measure", "cached", "off"), default="measure",
                   help="the machine's matmul GFLOP/s per precision, for each row's %% of floor: measure "
                        "it first (a few seconds), reuse this machine's cached one, or off "
                        "(default: %(default)s)")
    p.add_argument("--markdown", metavar="FILE", default=None, help="write the table as Markdown")
    p.add_argument("--output", "-o", metavar="FILE", default=None, help="write the JSON result to a file")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from deepfusionnet.output import emit_json
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.images import atomic_write_bytes
    from deepfusionnet.runtime.measure.bench import bench
    from deepfusionnet.runtime.measure.floor import floor_markdown
    from deepfusionnet.runtime.measure.plan import PRECISIONS
    from deepfusionnet.runtime.measure.plot import plot_frontier
    from deepfusionnet.runtime.measure.report import machine_markdown, markdown_table
    from deepfusionnet.runtime.sizes import parse_size

    precisions = list(PRECISIONS) if args.precision == "all" else _list(args.precision)
    sizes = [parse_size(s, minimum=8) for s in _list(args.size)]
    pairs = None
    if args.quality:
        from deepfusionnet.runtime.measure.pairs import find_pairs

        pairs = find_pairs(args.quality)[: args.quality_limit or None]

    def log(line: str) -> None:
        print(f"dfn bench: {line}", file=sys.stderr, flush=True)

    result = bench(args.model, _list(args.backend), precisions, sizes, runs=args.runs, warmup=args.warmup,
                   threads=args.threads, artifacts=args.artifacts, quality_pairs=pairs, log=log,
                   device=args.device, floor=args.floor)
    table = floor_markdown(result["floor"]) + "\n" + markdown_table(result)
    if args.output:
        atomic_write_bytes(Path(args.output), json.dumps(result, indent=2, default=str).encode())
    if args.markdown:
        atomic_write_bytes(Path(args.markdown), (machine_markdown(result["machine"]) + "\n" + table).encode())
    if args.plot:
        plot_frontier(result, args.plot)
    if args.json:
        emit_json(result)
    else:
        print(machine_markdown(result["machine"]), file=sys.stderr)
        print(table, file=sys.stderr)
    if not any(r["status"] == "ok" for r in result["rows"]):
        # A benchmark that measured nothing is a failure, whatever the table says.
        first = next((r["status"] for r in result["rows"]), "no configurations")
        raise DFNError(f"nothing was measured ({len(result['rows'])} configurations; first: {first})")
    return 0
