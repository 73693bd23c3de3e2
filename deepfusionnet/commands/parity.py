"""Compare a candidate model with a reference on real images: error stats, PSNR/SSIM, tolerances.

REFERENCE and CANDIDATE are shipped model names or files (.safetensors, .onnx, .engine, .xml), each
run through its runtime backend with the production padding/tiling. DIR holds images, or low/high
pairs (then PSNR vs ground truth is reported for both). The tolerance follows the candidate's
precision (from its sidecar or ONNX metadata) unless --precision is given:

  fp32: max abs error <= 1e-4    fp16: PSNR vs reference >= 45 dB (worst image)
  int8: PSNR vs reference >= 32 dB and ground-truth PSNR drop <= 0.5 dB

Exit code 1 when a tolerance is missed. Needs no torch for two ONNX files or engines.

examples:
  dfn parity runtime/weights/deepfusionnet.safetensors dfn-int8.onnx --data lol-v1/eval15
  dfn parity dfn-fp32.onnx dfn-fp32.onnx --backend openvino --data samples/night
"""

from __future__ import annotations

import argparse

from deepfusionnet.commands.device_option import add_device_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="reference model (shipped name or file)")
    p.add_argument("candidate", help="candidate model (shipped name or file)")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of images or low/high pairs (or one image)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="use only the first N images (0 = all)")
    p.add_argument("--backend-ref", default="default", metavar="NAME",
                   help="reference backend (default: torch for weights, onnxruntime for .onnx, tensorrt for engines)")
    p.add_argument("--backend", default="default", metavar="NAME", help="candidate backend (same defaults)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                   help="tolerance to apply (default: the candidate's precision)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per backend")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    import sys

    from deepfusionnet.output import emit_json
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.measure.compare import compare_models

    def say(s: str) -> None:
        print(s, file=sys.stderr)

    try:
        report = compare_models(args.reference, args.candidate, args.data, args.precision, args.limit or None,
                                args.backend_ref, args.backend, args.threads, progress=say,
                                device=args.device)
    except ValueError as exc:  # shape or scale mismatch between the two models
        raise DFNError(str(exc)) from None
    for line in report.lines():
        say(line)
    if args.json:
        emit_json(report.to_json())
    return 0 if report.passed else 1
