"""``dfn check``: is an ONNX graph one that TensorRT 10 (JetPack 6) or 11 will parse and build as exported?

Three layers, each from a tool this project did not write where one exists:

1. the ONNX checker with ``full_check`` and strict, type-checking shape inference (``onnx``);
2. TensorRT's own rules, written from its ONNX parser's operator table (:mod:`.trt_operators`) and its
   explicit-quantization rules: supported ops and types per target opset, DequantizeLinear reading INT8
   (never the INT32 conv biases ONNX Runtime's quantizer writes by default), zero points of zero,
   constant positive scales, per-tensor activation scales and per-channel weight scales on the output
   channel axis, one float type per node (strongly typed networks, the only kind TensorRT 11 builds),
   static channel counts, and DLA's static shapes when asked;
3. Polygraphy's ``check lint`` (ONNX checker + ONNX Runtime, node by node) when Polygraphy is installed.

Every violation is one line naming the node. Errors fail the check; warnings (e.g. a layer DLA runs on
the GPU instead) are reported and pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deepfusionnet.errors import DFNError, require
from deepfusionnet.export import trt_operators as ops

TARGETS = ("trt10", "trt11")
QUANTIZED_TYPES = {"INT8", "INT4", "FP8"}
# ops whose first input is a shape or a scalar bound (INT64), not data of the table's types
SHAPE_INPUT_OPS = {"ConstantOfShape", "Range", "EyeLike", "RandomNormal", "RandomUniform"}
# nodes whose float inputs TensorRT's strongly typed mode requires to share one type
SAME_TYPE_OPS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Concat",
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "PRelu",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
}


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    message: str
    severity: str = "error"  # or "warning"

    def line(self) -> str:
        return f"{self.severity}: {self.node}: {self.message} [{self.rule}]"

    def to_json(self) -> dict:
        return {"rule": self.rule, "node": self.node, "message": self.message, "severity": self.severity}


@dataclass
class Graph:
    """What the rules read: the model, its tensors' inferred types and shapes, and its constants."""

    proto: object
    types: dict[str, str]
    shapes: dict[str, tuple]
    constants: dict[str, np.ndarray]
    producers: dict[str, object]
    consumers: dict[str, list]


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    name = TensorProto.DataType.Name(elem_type)
    return {
        "FLOAT": "FP32",
        "FLOAT16": "FP16",
        "BFLOAT16": "BF16",
        "DOUBLE": "FP64",
        "FLOAT8E4M3FN": "FP8",
        "FLOAT8E5M2": "FP8",
    }.get(name, name)


def _dims(tensor_type) -> tuple:
    if not tensor_type.HasField("shape"):
        return ()
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
    )


def load_graph(proto) -> tuple[Graph, list[Violation]]:
    """Run the ONNX checker and strict shape inference on ``proto``; index what the rules need."""
    onnx = require("onnx", "export")
    from onnx import numpy_helper

    found: list[Violation] = []
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError / InferenceError: the checker's own message, first line
        found.append(Violation("onnx-checker", "graph", _first_line(exc)))
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        found.append(Violation("shape-inference", "graph", _first_line(exc)))
        inferred = proto
    g = inferred.graph
    types, shapes = {}, {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = _type_name(vi.type.tensor_type.elem_type)
            shapes[vi.name] = _dims(vi.type.tensor_type)
    constants = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    constants[n.output[0]] = numpy_helper.to_array(a.t)
    for name, arr in constants.items():
        types.setdefault(name, _type_name(onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)))
        shapes.setdefault(name, tuple(arr.shape))
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    return Graph(inferred, types, shapes, constants, producers, consumers), found


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _name(node) -> str:
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


# -- rules ------------------------------------------------------------------------------------------


def rule_opset(g: Graph, target: str) -> Iterable[Violation]:
    lo, hi = ops.OPSET_RANGE[target]
    for imp in g.proto.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            yield Violation(
                "opset", "graph", f"default-domain opset {imp.version}; {target} parses {lo} to {hi}"
            )


def rule_supported_ops(g: Graph, target: str) -> Iterable[Violation]:
    table = dict(ops.SUPPORTED_TRT10)
    if target == "trt11":
        table.update(ops.ADDED_IN_TRT11)
    for n in g.proto.graph.node:
        if n.domain not in ("", "ai.onnx"):
            yield Violation(
                "op", _name(n), f"{n.domain}.{n.op_type} is not an ONNX op: TensorRT needs a plugin for it"
            )
            continue
        allowed = table.get(n.op_type)
        if allowed is None:
            yield Violation(
                "op", _name(n), f"{n.op_type} is not supported by TensorRT's ONNX parser ({target})"
            )
            continue
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type in SHAPE_INPUT_OPS:
            continue  # Q/DQ types have rules of their own; the others' table types are their outputs
        for t in n.input[:1]:
            ty = g.types.get(t)
            if ty in QUANTIZED_TYPES:
                yield Violation(
                    "types",
                    _name(n),
                    f"{n.op_type} reads {ty} tensor {t!r}; quantized types reach "
                    "a layer only through DequantizeLinear",
                )
            elif ty and ty not in allowed.split() and ty != "FP64":
                yield Violation(
                    "types", _name(n), f"{n.op_type} does not take {ty} (input {t!r}); it takes {allowed}"
                )


def _is_constant(g: Graph, tensor: str) -> bool:
    if tensor in g.constants:
        return True
    p = g.producers.get(tensor)
    # a weight stored quantized or in another float type: DQ(constant) or Cast(constant)
    return (
        p is not None
        and p.op_type in ("DequantizeLinear", "Cast", "Identity")
        and _is_constant(g, p.input[0])
    )


def rule_quantization(g: Graph, target: str) -> Iterable[Violation]:
    """TensorRT's explicit quantization: INT8 (FP8/INT4) in DQ and out of Q, zero points 0, constant
    positive scales, per-tensor scales on activations, per-channel weights on the output-channel axis."""
    for n in g.proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name, x = _name(n), n.input[0]
        qtensor = x if n.op_type == "DequantizeLinear" else n.output[0]
        qtype = g.types.get(qtensor)
        if qtype is not None and qtype not in QUANTIZED_TYPES:
            what = "reads" if n.op_type == "DequantizeLinear" else "writes"
            yield Violation(
                "qdq-type",
                name,
                f"{n.op_type} {what} {qtype} {qtensor!r}; TensorRT takes only INT8, FP8 "
                "or INT4 here (keep biases float: quantize without QuantizeBias)",
            )
        if n.op_type == "QuantizeLinear" and g.types.get(x) not in (None, "FP32", "FP16", "BF16"):
            yield Violation(
                "qdq-type", name, f"QuantizeLinear input {x!r} is {g.types.get(x)}; it must be float"
            )
        if len(n.input) > 2 and n.input[2]:
            zp = g.constants.get(n.input[2])
            if zp is None:
                yield Violation("qdq-zero-point", name, "zero point is not a constant")
            elif np.any(zp.astype(np.float64) != 0):
                yield Violation(
                    "qdq-zero-point", name, "zero point is not 0 (TensorRT quantizes symmetrically)"
                )
        scale = g.constants.get(n.input[1])
        if scale is None:
            yield Violation("qdq-scale", name, f"scale {n.input[1]!r} is not a constant")
            continue
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            yield Violation("qdq-scale", name, "scale has a zero, negative or non-finite value")
        if scale.ndim > 1:
            yield Violation(
                "qdq-scale",
                name,
                f"scale of shape {list(scale.shape)}: TensorRT takes a scalar or a 1-D per-channel scale",
            )
        elif scale.ndim == 1 and scale.size > 1:
            yield from _per_channel(g, n, name, scale)


def _per_channel(g: Graph, n, name: str, scale: np.ndarray) -> Iterable[Violation]:
    x = n.input[0]
    if not _is_constant(g, x):
        yield Violation(
            "qdq-axis",
            name,
            f"per-channel scale on activation {x!r}: TensorRT quantizes activations per tensor",
        )
        return
    axis = _attr(n, "axis", 1)
    shape = g.shapes.get(x, ())
    if shape and isinstance(shape[axis % len(shape)], int) and shape[axis % len(shape)] != scale.size:
        yield Violation(
            "qdq-axis", name, f"{scale.size} scales for axis {axis} of size {shape[axis % len(shape)]}"
        )
    for c in g.consumers.get(n.output[0], []):
        want = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}.get(c.op_type)
        if (
            want is not None
            and len(c.input) > 1
            and c.input[1] == n.output[0]
            and axis % max(len(shape), 1) != want
        ):
            yield Violation(
                "qdq-axis",
                name,
                f"per-channel weights of {c.op_type} {_name(c)!r} on axis {axis}; "
                f"TensorRT needs the output-channel axis {want}",
            )


def rule_strong_types(g: Graph, target: str) -> Iterable[Violation]:
    """No node mixes float types (TensorRT 11 builds only strongly typed networks; 10 does with
    --stronglyTyped): an FP16 tensor meets an FP32 one only through a Cast."""
    floats = {"FP32", "FP16", "BF16"}
    for n in g.proto.graph.node:
        if n.op_type not in SAME_TYPE_OPS:
            continue
        seen = {g.types[t] for t in n.input if t and g.types.get(t) in floats}
        if len(seen) > 1:
            yield Violation(
                "strong-types",
                _name(n),
                f"{n.op_type} mixes {' and '.join(sorted(seen))} inputs; insert a Cast",
            )


def rule_attributes(g: Graph, target: str) -> Iterable[Violation]:
    """The parser's per-op restrictions that apply to image networks."""
    for n in g.proto.graph.node:
        name = _name(n)
        if n.op_type == "Resize":
            mode = _attr(n, "mode", b"nearest")
            ctm = _attr(n, "coordinate_transformation_mode", b"half_pixel")
            nearest = _attr(n, "nearest_mode", b"round_prefer_floor")
            mode, ctm, nearest = (v.decode() if isinstance(v, bytes) else v for v in (mode, ctm, nearest))
            if mode not in ops.RESIZE_MODES:
                yield Violation("resize", name, f"Resize mode {mode!r}; TensorRT supports nearest and linear")
            if ctm not in ops.RESIZE_COORDINATE_MODES:
                yield Violation("resize", name, f"coordinate_transformation_mode {ctm!r} is not supported")
            if mode == "nearest" and nearest not in ops.RESIZE_NEAREST_MODES:
                yield Violation("resize", name, f"nearest_mode {nearest!r} is not supported")
            if _attr(n, "antialias", 0):
                yield Violation("resize", name, "antialiasing is not supported")
        elif n.op_type in ("MaxPool", "AveragePool", "LpPool"):
            if any(d != 1 for d in (_attr(n, "dilations", []) or [])):
                yield Violation("pool", name, f"{n.op_type} with dilations; TensorRT needs none")
            if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
                yield Violation("pool", name, "MaxPool's Indices output is not supported")
        if n.op_type in ops.AXES_MUST_BE_CONSTANT:
            idx = {"Slice": 3, "Pad": 3}.get(n.op_type, 1)
            if len(n.input) > idx and n.input[idx] and not _is_constant(g, n.input[idx]):
                yield Violation("axes", name, f"{n.op_type}'s axes input must be a constant")


def rule_io_shapes(g: Graph, target: str) -> Iterable[Violation]:
    """Inputs and outputs: known rank, static channel count, positive sizes, FP32/FP16 image tensors."""
    for vi in list(g.proto.graph.input) + list(g.proto.graph.output):
        if vi.name in g.constants:
            continue
        shape = _dims(vi.type.tensor_type)
        if not shape:
            yield Violation("io-shape", vi.name, "rank unknown: TensorRT needs each IO tensor's rank")
            continue
        if any(isinstance(d, int) and d <= 0 for d in shape):
            yield Violation("io-shape", vi.name, f"shape {list(shape)} has a zero or negative size")
        if len(shape) == 4 and not isinstance(shape[1], int):
            yield Violation("io-shape", vi.name, "dynamic channel count: convolutions need it at build time")


def rule_dla(g: Graph, target: str) -> Iterable[Violation]:
    """DLA: static shapes no larger than 8192 (errors); layers DLA does not run (warnings: GPU fallback)."""
    if target == "trt11":
        yield Violation(
            "dla",
            "graph",
            "DLA is absent from TensorRT 11.0-11.3; 11.4.1+ has it on AGX Orin with JetPack 7.2.2+ only",
            "warning",
        )
    for vi in g.proto.graph.input:
        if vi.name in g.constants:
            continue
        shape = _dims(vi.type.tensor_type)
        if not all(isinstance(d, int) for d in shape):
            yield Violation(
                "dla",
                vi.name,
                f"dynamic shape {list(shape)}: DLA needs a fixed size (export with "
                "--size WxH, build with min = opt = max)",
            )
        elif any(d > ops.DLA_MAX_DIM for d in shape[1:]):
            yield Violation(
                "dla", vi.name, f"shape {list(shape)} exceeds DLA's {ops.DLA_MAX_DIM} per dimension"
            )
    for n in g.proto.graph.node:
        if n.op_type not in ops.DLA_OPS:
            yield Violation("dla", _name(n), f"{n.op_type} does not run on DLA (GPU fallback)", "warning")
    floats = {g.types.get(t) for n in g.proto.graph.node if n.op_type == "Conv" for t in n.input[:1]}
    if floats and floats <= {"FP32"} and not any(n.op_type == "DequantizeLinear" for n in g.proto.graph.node):
        yield Violation(
            "dla",
            "graph",
            "an FP32 graph: DLA computes in FP16/INT8 only (export --precision fp16 or int8)",
            "warning",
        )


RULES: list[Callable[[Graph, str], Iterable[Violation]]] = [
    rule_opset,
    rule_supported_ops,
    rule_quantization,
    rule_strong_types,
    rule_attributes,
    rule_io_shapes,
]


def check_graph(proto, target: str = "trt10", dla: bool = False) -> list[Violation]:
    """Every violation of the ONNX checker and of TensorRT ``target``'s rules in ``proto``."""
    if target not in TARGETS:
        raise DFNError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    g, found = load_graph(proto)
    for rule in RULES + ([rule_dla] if dla else []):
        found.extend(rule(g, target))
    return found


def lint_shapes(proto, multiple: int = 8) -> str | None:
    """``--input-shapes`` for Polygraphy when an input has dynamic dims (a small frame, a multiple of 8)."""
    parts = []
    for vi in proto.graph.input:
        shape = _dims(vi.type.tensor_type)
        if shape and not all(isinstance(d, int) for d in shape):
            size = 8 * multiple
            fixed = [d if isinstance(d, int) else (1 if i == 0 else size) for i, d in enumerate(shape)]
            parts.append(f"{vi.name}:[{','.join(map(str, fixed))}]")
    return " ".join(parts) or None


def polygraphy_lint(path: str | Path, proto=None, timeout: float = 600) -> list[Violation] | None:
    """Polygraphy's ``check lint`` on ``path`` (None when Polygraphy is not installed)."""
    import importlib.util

    if importlib.util.find_spec("polygraphy") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="dfn-lint-") as tmp:
        report = Path(tmp, "lint.json")
        cmd = [
            sys.executable,
            "-c",
            "import sys; from polygraphy.tools import main; sys.exit(main())",
            "check",
            "lint",
            str(path),
            "-o",
            str(report),
            "--silent",
        ]
        shapes = lint_shapes(proto) if proto is not None else None
        if shapes:
            cmd[cmd.index("-o") : cmd.index("-o")] = ["--input-shapes", *shapes.split()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [
                Violation(
                    "polygraphy-lint", "graph", f"polygraphy check lint did not finish in {timeout:g} s"
                )
            ]
        if not report.is_file() and "POLYGRAPHY_AUTOINSTALL_DEPS" in (done.stderr + done.stdout):
            return None  # Polygraphy is there but a module its lint imports is not: the lint is unavailable
        if not report.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()
            return [
                Violation(
                    "polygraphy-lint",
                    "graph",
                    f"polygraphy check lint failed: {tail[-1] if tail else done.returncode}",
                )
            ]
        data = json.loads(report.read_text())
    out = []
    for entry in data.get("linting_entries", []):
        level = "error" if entry.get("level", "error") == "error" else "warning"
        nodes = ", ".join(entry.get("nodes", [])) or "graph"
        out.append(
            Violation("polygraphy-lint", nodes, " ".join(str(entry.get("message", "")).split())[:300], level)
        )
    return out


def load_model(path: str | Path):
    """The ONNX model at ``path``, or a one-line :class:`DFNError` saying why not."""
    onnx = require("onnx", "export")
    path = Path(path)
    if not path.is_file():
        raise DFNError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise DFNError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None


def errors(found: Iterable[Violation]) -> list[Violation]:
    return [v for v in found if v.severity == "error"]
