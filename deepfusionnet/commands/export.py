"""Export a model to ONNX in FP32, FP16 or INT8 (precision in the graph), checked against PyTorch.

FP16 is a float16 graph with FP32 inputs/outputs and the fragile nodes kept FP32; INT8 is explicit
symmetric Q/DQ (float biases) calibrated on your frames. Every graph passes the TensorRT 10 and 11
conformance gate (`dfn check`) before it is written, so it builds strongly typed on both. After export
the graph runs against the PyTorch model on real images; a missed tolerance is an error (exit 1)
unless --no-check.

examples:
  dfn export deepfusionnet -o dfn.onnx                              # dynamic H/W (the default)
  dfn export deepfusionnet -o dfn-640x480.onnx --size 640x480       # fixed size (DLA, one camera mode)
  dfn export deepfusionnet -o dfn-int8.onnx --precision int8 --calib data/lol-v1/train/low
  dfn export unet-sid --weights runs/unet-sid/best.safetensors -o unet.onnx   # a registered model
  dfn export my_pkg.nets:build --weights my.safetensors --multiple 8 -o my.onnx   # your own network

Writes OUT.onnx and OUT.onnx.json (the sidecar: IO, hashes, tool versions, calibration, parity).
"""

from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    """``--size WxH`` as argparse wants it (runtime.sizes.parse_size; its error as a usage error)."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.sizes import parse_size

    try:
        return parse_size(text)
    except DFNError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="shipped model name (deepfusionnet, deepfusionnet-sr), a weights file, or with "
                   "--weights a registered model name (docs/models.md) or your own network as "
                   "package.module:function")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="ONNX file to write")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    m = p.add_argument_group("the model's weights and shape (docs/models.md)")
    m.add_argument("--weights", metavar="FILE", help="weights (.safetensors or a .pt state dict) for MODEL given "
                   "as a registered name or as package.module:function")
    m.add_argument("--scale", type=int, default=None, metavar="N",
                   help="package.module:function models: output size / input size (default 1; 2 for x2 SR)")
    m.add_argument("--multiple", type=int, default=None, metavar="N",
                   help="package.module:function models: input height and width must be multiples of N "
                        "(default 1; the runtime pads to it)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--size", type=_size, default=None, metavar="WxH",
                       help="fixed input size instead of dynamic H/W (the runtime pads smaller frames and tiles "
                            "larger ones to it; DLA needs one)")
    shape.add_argument("--dynamic", action="store_true", help="dynamic height and width (the default)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy",
                   help="torch.onnx path: legacy TorchScript (default) or dynamo")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    g = p.add_argument_group("INT8 calibration")
    g.add_argument("--calib", metavar="DIR", help="frames to calibrate on, like the ones the model will see "
                   "(needed for int8: e.g. LOL-v1 train/low, train/high for the SR model; fp16 measures "
                   "activation peaks on two of them, default: the shipped samples)")
    g.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="percentile")
    g.add_argument("--calib-count", type=int, default=32, metavar="N", help="frames to calibrate on (default 32)")
    g.add_argument("--calib-size", type=_size, default=(320, 240), metavar="WxH", help="calibration size (default 320x240)")
    g.add_argument("--keep-float", action="append", default=[], metavar="PATTERN",
                   help="also keep float the convs whose node name contains PATTERN, "
                        "e.g. /dec2/ (repeatable)")
    g.add_argument("--quantize", action="append", default=[], metavar="PATTERN",
                   help="quantize nodes the defaults keep float, e.g. /dec1/ for speed (repeatable; "
                        "the parity check still guards the result)")
    g.add_argument("--fallback-db", type=float, default=35.0, metavar="DB",
                   help="keep whole stages float, one at a time, until the worst of --fallback-frames frames "
                        "from --calib (not the calibration ones) reaches DB PSNR against FP32 (default 35; 0 = off)")
    g.add_argument("--fallback-frames", type=int, default=8, metavar="N",
                   help="frames the fallback search checks, at up to 320x240 (default 8)")
    c = p.add_argument_group("parity check against PyTorch")
    c.add_argument("--no-check", action="store_true", help="skip the parity check")
    c.add_argument("--no-lint", action="store_true", help="skip Polygraphy's lint (the TensorRT rules still run)")
    c.add_argument("--check-data", metavar="DIR", help="images or low/high pairs (default: the shipped sample "
                   "night frames)")
    c.add_argument("--check-images", type=int, default=4, metavar="N", help="images to check (default 4; 0 = all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the check")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from deepfusionnet.errors import DFNError, require

    require("torch", "export")
    require("onnx", "export")
    from deepfusionnet.output import emit_json
    from deepfusionnet.export.pipeline import ExportOptions, export_model

    def say(s: str) -> None:
        print(s, file=sys.stderr)

    opts = ExportOptions(
        precision=args.precision, size=None if args.dynamic else args.size, opset=args.opset,
        exporter=args.exporter, simplify=not args.no_simplify,
        calib_dir=Path(args.calib) if args.calib else None, calib_method=args.calib_method,
        calib_count=args.calib_count, calib_size=args.calib_size, keep_float=tuple(args.keep_float),
        quantize=tuple(args.quantize), fallback_db=args.fallback_db, fallback_frames=args.fallback_frames,
        check=not args.no_check, lint=not args.no_lint,
        check_data=Path(args.check_data) if args.check_data else None, check_images=args.check_images,
        threads=args.threads, weights=Path(args.weights) if args.weights else None, scale=args.scale,
        multiple=args.multiple)
    result = export_model(args.model, args.output, opts, progress=say)
    if result.parity is not None:
        for line in result.parity.lines():
            say(line)
    if args.json:
        emit_json({"path": str(result.path), "sidecar": str(result.sidecar), **result.info})
    if not result.passed:
        raise DFNError(f"{result.path}: parity check failed ({'; '.join(result.parity.failures())}); the file is "
                       "kept for inspection; use --no-check to accept it, or try another --calib-method / precision")
    return 0
