"""Size of a model artifact without torch: parameters, convolution multiply-adds, sha256.

- ONNX: parameters are counted from the graph's initializers by a tiny protobuf reader (no ``onnx``
  package needed), leaving out BatchNorm running statistics so the count equals PyTorch's
  ``sum(p.numel() for p in model.parameters())``. Conv multiply-adds need output shapes: with the
  ``onnx`` package they come from shape inference at a fixed input size (or, when inference leaves a
  shape symbolic, from one ONNX Runtime run that exposes the Conv outputs); without it they are None.
- safetensors: parameters from the file header (again no torch), running statistics left out.

MACs convention (as most papers' "FLOPs"): per Conv, ``output elements x (Cin / groups) x kH x kW``;
other layers (activations, pooling, resize, attention element-wise ops) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deepfusionnet.errors import DFNError

# Buffers, not parameters: BatchNorm statistics, and the marker of the SR model with a skip (train/models).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "sr_skip")
# TensorProto.DataType values that hold learnable numbers (float, float16, double, bfloat16, int8, uint8).
_PARAM_DTYPES = {1, 10, 11, 16, 3, 2}




# --- a minimal protobuf reader: just enough of onnx.proto for initializers and nodes -------------

def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield ``(field number, wire type, value)``; length-delimited values are ``(start, end)`` offsets."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = (i, i + 8), i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = (i, i + n), i + n
        elif wt == 5:
            v, i = (i, i + 4), i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _str(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


@dataclass
class OnnxGraphSummary:
    # name -> (dims, TensorProto data type)
    initializers: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    nodes: list[tuple[str, list[str], list[str]]] = field(default_factory=list)  # (op_type, inputs, outputs)
    metadata: dict[str, str] = field(default_factory=dict)


def read_onnx_summary(path: str | Path) -> OnnxGraphSummary:
    """Initializer shapes, node op types/inputs and metadata of an ONNX file, without ``onnx``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DFNError(f"{path}: cannot read ({exc.strerror})") from None
    buf = memoryview(data)
    out = OnnxGraphSummary()
    try:
        graph = None
        for num, wt, v in _fields(buf, 0, len(buf)):
            if num == 7 and wt == 2:
                graph = v
            elif num == 14 and wt == 2:  # metadata_props: StringStringEntryProto
                kv = {n: _str(buf, s) for n, w, s in _fields(buf, *v) if w == 2}
                out.metadata[kv.get(1, "")] = kv.get(2, "")
        if graph is None:
            raise ValueError("no graph")
        for num, wt, v in _fields(buf, *graph):
            if num == 5 and wt == 2:  # initializer: TensorProto
                dims: list[int] = []
                dtype, name = 0, ""
                for n, w, s in _fields(buf, *v):
                    if n == 1 and w == 0:
                        dims.append(s)
                    elif n == 1 and w == 2:  # packed dims
                        j = s[0]
                        while j < s[1]:
                            d, j = _varint(buf, j)
                            dims.append(d)
                    elif n == 2 and w == 0:
                        dtype = s
                    elif n == 8 and w == 2:
                        name = _str(buf, s)
                out.initializers[name] = (tuple(dims), dtype)
            elif num == 1 and wt == 2:  # node: NodeProto
                ins, outs, op = [], [], ""
                for n, w, s in _fields(buf, *v):
                    if n == 1 and w == 2:
                        ins.append(_str(buf, s))
                    elif n == 2 and w == 2:
                        outs.append(_str(buf, s))
                    elif n == 4 and w == 2:
                        op = _str(buf, s)
                out.nodes.append((op, ins, outs))
    except (ValueError, IndexError) as exc:
        raise DFNError(f"{path}: not a valid ONNX file ({exc})") from None
    if not out.nodes:
        raise DFNError(f"{path}: not a valid ONNX file (no graph nodes)")
    return out


def _numel(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def onnx_params(summary: OnnxGraphSummary) -> tuple[int, int]:
    """``(parameters, all initializer elements)``: parameters leave out BatchNorm running stats and
    the constants that only say how to resize (Resize's roi/scales/sizes), as torch does."""
    not_params = {"BatchNormalization": (3, 4), "Resize": (1, 2, 3)}
    stats = {ins[i] for op, ins, _ in summary.nodes if op in not_params
             for i in not_params[op] if i < len(ins)}
    total = sum(_numel(d) for d, _ in summary.initializers.values())
    params = sum(_numel(d) for name, (d, t) in summary.initializers.items()
                 if name not in stats and t in _PARAM_DTYPES)
    return params, total


def safetensors_params(path: str | Path) -> int:
    """Parameters in a safetensors file (BatchNorm running statistics left out), read from its header."""
    from deepfusionnet.runtime.artifacts import safetensors_header

    header = safetensors_header(path)
    return sum(_numel(tuple(v["shape"])) for k, v in header.items()
               if k != "__metadata__" and not k.endswith(_BUFFER_SUFFIXES))


def onnx_conv_macs(path: str | Path, height: int, width: int) -> tuple[int | None, str]:
    """Conv multiply-adds of an ONNX graph for a ``(1, 3, height, width)`` input, and a note.

    Returns ``(None, reason)`` when the ``onnx`` package is not installed.
    """
    table, note = onnx_conv_table(path, height, width)
    return (None, note) if table is None else (sum(macs for _, macs, _ in table), note)


def _from_dq(name: str, producers: dict) -> bool:
    """Whether ``name`` comes out of a DequantizeLinear (through Identity/Cast): an INT8 operand."""
    while name in producers and producers[name].op_type in ("Identity", "Cast"):
        name = producers[name].input[0]
    return name in producers and producers[name].op_type == "DequantizeLinear"


def onnx_conv_table(path: str | Path, height: int, width: int) -> tuple[list[tuple[str, int, bool]] | None,
                                                                        str]:
    """Per Conv/ConvTranspose: ``(name, multiply-adds, int8)`` at a ``(1, 3, height, width)`` input, and a
    note.

    ``int8``: both the data and the weight come out of DequantizeLinear (a Q/DQ conv, which ONNX Runtime
    and OpenVINO run as an integer conv). ``(None, reason)`` without the ``onnx`` package.
    """
    try:
        import onnx
    except ImportError:
        return None, "MACs need the onnx package (pip install 'deepfusionnet[export]')"
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    shapes = _shapes(onnx, model, height, width)
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    # A Conv's MACs follow from its output, a ConvTranspose's from its input (each input pixel is spread
    # over a kernel): the tensor whose shape each needs.
    counted = {n.name or n.output[0]: n.output[0] if n.op_type == "Conv" else n.input[0] for n in convs}

    def weight_shape(name: str) -> tuple[int, ...] | None:
        # INT8 (QDQ) graphs feed Conv from DequantizeLinear(initializer): follow such chains back.
        while name not in shapes and name in producers and producers[name].op_type in (
                "DequantizeLinear", "Cast", "Identity", "QuantizeLinear"):
            name = producers[name].input[0]
        return shapes.get(name)

    note = "conv MACs from ONNX shape inference"
    if any(t not in shapes for t in counted.values()):
        shapes.update(tensor_shapes_by_running(model, list(counted.values()), height, width, str(path)))
        note = "conv MACs from conv shapes of one ONNX Runtime run"
    table = []
    for n in convs:
        w = weight_shape(n.input[1])
        y = shapes.get(counted[n.name or n.output[0]])
        if w is None or y is None:
            return None, f"could not determine the shape of {n.op_type} {n.name or n.output[0]}"
        # Conv: out elems x (Cin / groups) x kH x kW; ConvTranspose (weight Cin x Cout/groups x kH x kW):
        # in elems x (Cout / groups) x kH x kW.
        int8 = _from_dq(n.input[0], producers) and _from_dq(n.input[1], producers)
        table.append((n.name or n.output[0], _numel(y) * _numel(w[1:]), int8))
    return table, note


def _shapes(onnx, model, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Initializer shapes and every shape ONNX shape inference fixes at a ``(1, 3, height, width)`` input
    (the model's input dims are set in place)."""
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in init_names)
    for d, v in zip(inp.type.tensor_type.shape.dim, (1, 3, height, width)):
        d.ClearField("dim_param")
        d.dim_value = v
    shapes: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
    except Exception:  # noqa: BLE001 - inference is best effort; ONNX Runtime is exact
        pass
    return shapes


def tensor_shapes_by_running(model, names: list[str], height: int, width: int, path: str) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from deepfusionnet.errors import DFNError as _E

    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(Path(path).parent))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Conv
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        dtype = np.float16 if "float16" in inp.type else np.float32
        outs = sess.run(names, {inp.name: np.zeros((1, 3, height, width), dtype)})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise _E(f"{path}: cannot run the graph at {width}x{height} to count MACs "
                 f"({str(exc)[:200]})") from None
    return {n: tuple(o.shape) for n, o in zip(names, outs)}
