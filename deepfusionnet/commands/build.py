"""Build a TensorRT engine from an exported ONNX graph (FP32, FP16 or INT8 Q/DQ), on the device that runs it.

The network is strongly typed: the precision is the graph's (TensorRT 10.x and 11.x). The engine is a
plain TensorRT plan (trtexec and Polygraphy load it); a JSON sidecar X.engine.json beside it records the
TensorRT version, GPU, precision, shapes, ONNX hash and these options.

examples:
  dfn build deepfusionnet-fp16.onnx -o enh-fp16.engine --shape 640x480 --timing-cache ~/.cache/dfn/trt.cache
  dfn build model.onnx -o model.engine --min 256x256 --opt 1280x720 --max 1920x1088
  dfn build model-fp32.onnx -o model.engine --fp16-flag          # TensorRT 10 only
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX graph from dfn export (or a shipped model name)")
    p.add_argument("-o", "--output", help="engine file to write (default: the ONNX name with .engine)")
    shapes = p.add_argument_group("input size (WIDTHxHEIGHT like dfn export --size; only for graphs "
                                  "exported with --dynamic, a fixed-size graph keeps its size)")
    shapes.add_argument("--shape", metavar="WxH", help="fixed input size, e.g. the camera's 640x480 (fastest)")
    shapes.add_argument("--min", metavar="WxH", help="smallest input of a dynamic profile (default 64x64)")
    shapes.add_argument("--opt", metavar="WxH", help="size to tune for: the camera size (default 640x480)")
    shapes.add_argument("--max", metavar="WxH", help="largest input (default 1024x1024; larger frames are tiled)")
    p.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB (default: TensorRT's)")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="tactic timing cache: read if present, updated after the build (speeds up rebuilds)")
    p.add_argument("--fp16-flag", action="store_true",
                   help="TensorRT 10 only: build an FP32 graph with BuilderFlag.FP16 (weakly typed)")
    p.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N (Jetson AGX/NX Orin); FP16/INT8 graphs")
    p.add_argument("--no-gpu-fallback", action="store_true", help="with --dla-core: fail instead of running "
                   "unsupported layers on the GPU")
    p.add_argument("--quiet", action="store_true", help="no build progress")


def _progress_printer():
    import sys

    tty = sys.stderr.isatty()
    state = {"last": ""}

    def report(phase: str, step: int, steps: int, depth: int) -> None:
        if depth > 1:
            return
        if tty:
            line = f"  {'  ' * depth}{phase} {step}/{steps}" if steps else f"  {'  ' * depth}{phase}"
            sys.stderr.write("\r" + line[:100].ljust(len(state["last"])))
            sys.stderr.flush()
            state["last"] = line[:100]
        elif step == 0 and depth == 0:
            print(f"  {phase}", file=sys.stderr)

    def done() -> None:
        if tty and state["last"]:
            sys.stderr.write("\r" + " " * len(state["last"]) + "\r")
            sys.stderr.flush()

    return report, done


def run(args: argparse.Namespace) -> int:
    import sys

    from deepfusionnet.runtime.backends.tensorrt import import_tensorrt

    trt = import_tensorrt()  # first, so a machine without TensorRT gets the one-line install hint
    from deepfusionnet.export.tensorrt import BuildOptions, companion_engines, engine_from_onnx, hw_from_size

    opt = lambda v: hw_from_size(v) if v else None  # noqa: E731
    options = BuildOptions(shape=opt(args.shape), min_shape=opt(args.min), opt_shape=opt(args.opt),
                           max_shape=opt(args.max), workspace_mb=args.workspace, timing_cache=args.timing_cache,
                           fp16_flag=args.fp16_flag, dla_core=args.dla_core, gpu_fallback=not args.no_gpu_fallback)
    report, done = (None, lambda: None) if args.quiet else _progress_printer()
    if not args.quiet:
        print(f"dfn build: {args.model} with TensorRT {trt.__version__}", file=sys.stderr)
    try:
        result = engine_from_onnx(args.model, args.output, options, progress=report, trt=trt)
        # the seam-free tiling companions (runtime.tile_context), built with the same options
        result["companions"] = companion_engines(args.model, result["engine"], options, progress=report, trt=trt)
    finally:
        done()
    if args.json:
        from deepfusionnet.output import emit_json

        emit_json(result)
    gpu = result["gpu"].get("name", "unknown GPU")
    prof = next(iter(result["profile"].values()), {})
    shape = ("x".join(map(str, prof["min"])) if prof.get("min") == prof.get("max")
             else f"{'x'.join(map(str, prof['min']))}..{'x'.join(map(str, prof['max']))}") if prof else "?"
    print(f"built {result['engine']} ({result['engine_bytes'] / 1e6:.1f} MB, {result['precision']}, {shape}) "
          f"in {result['build_seconds']:.1f} s on {gpu}; sidecar {result['sidecar']}; timing cache "
          f"{result['build']['timing_cache_status']}", file=sys.stderr)
    if result["companions"]:
        print(f"built the tiling companions {', '.join(result['companions'].values())}", file=sys.stderr)
    return 0
