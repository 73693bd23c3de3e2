"""Check that an ONNX graph will parse and build in TensorRT: the ONNX checker, TensorRT's operator and
quantization rules for the target version, and Polygraphy's lint.

Rules per target: supported ops and their tensor types, opset range (TensorRT 10: 9-20; 11: 9-25),
DequantizeLinear reading INT8/FP8/INT4 only (never INT32 biases), zero points of 0, constant positive
scales, per-tensor activation and per-output-channel weight scales, one float type per node (strongly
typed), static channel counts; with --dla also DLA's static shapes and the layers it runs. One line per
violation, naming the node; exit 1 when there is an error. `dfn export` runs the same gate.

examples:
  dfn check dfn-int8.onnx
  dfn check dfn-fp16.onnx --target trt10 --dla
  dfn check deepfusionnet --target trt11 --json
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file or a shipped model name")
    p.add_argument(
        "--target",
        action="append",
        choices=("trt10", "trt11"),
        default=None,
        help="TensorRT version to check against: trt10 (JetPack 6: 10.3) or trt11; repeatable "
        "(default: both)",
    )
    p.add_argument("--dla", action="store_true", help="also check DLA's rules (fixed shapes, DLA layers)")
    p.add_argument("--no-lint", action="store_true", help="skip Polygraphy's lint")


def run(args: argparse.Namespace) -> int:
    import sys

    from deepfusionnet.errors import DFNError, require

    require("onnx", "export")
    from deepfusionnet.export.conformance import check_graph, errors, load_model, polygraphy_lint
    from deepfusionnet.runtime.artifacts import resolve

    artifact = resolve(args.model)
    if artifact.kind != "onnx":
        raise DFNError(f"{artifact.path}: dfn check reads ONNX graphs; this is a {artifact.kind} file")
    targets = args.target or ["trt10", "trt11"]
    report: dict = {"model": str(artifact.path), "targets": {}}
    proto = load_model(artifact.path)  # read once: every target and the lint check the same graph
    lint_found = None if args.no_lint else polygraphy_lint(artifact.path, proto)
    for target in targets:
        found = check_graph(proto, target, args.dla)
        report["targets"][target] = [v.to_json() for v in found]
        for v in found:
            print(f"{target}: {v.line()}", file=sys.stderr)
        print(
            f"{target}: {'FAIL' if errors(found) else 'PASS'} ({len(errors(found))} errors, "
            f"{len(found) - len(errors(found))} warnings)",
            file=sys.stderr,
        )
    if lint_found is None:
        report["polygraphy_lint"] = "skipped" if args.no_lint else "not installed (pip install polygraphy)"
    else:
        report["polygraphy_lint"] = [v.to_json() for v in lint_found]
        for v in lint_found:
            print(f"polygraphy lint: {v.line()}", file=sys.stderr)
        print(f"polygraphy lint: {'FAIL' if errors(lint_found) else 'PASS'}", file=sys.stderr)
    if args.json:
        from deepfusionnet.output import emit_json

        emit_json(report)
    failed = [t for t in targets if any(v["severity"] == "error" for v in report["targets"][t])]
    if lint_found and errors(lint_found):
        failed.append("polygraphy lint")
    if failed:
        raise DFNError(f"{artifact.path}: fails {', '.join(failed)} (details above)")
    return 0

