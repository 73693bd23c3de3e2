"""PyTorch -> FP32 ONNX: export, check, simplify, optionally fix the input size.

The graph is always exported with dynamic H/W first; a fixed size is applied afterwards with ONNX
Runtime's own tool, so every precision (INT8 calibrates at a small size) starts from the same graph.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from deepfusionnet.errors import DFNError, require

DEFAULT_OPSET = 17  # >= 17 (LayerNormalization, TensorRT 8.6+); the legacy exporter caps at 20
INPUT, OUTPUT = "input", "output"


def load_source(model: str | Path):
    """A shipped model name or a weights file -> ``(nn.Module in eval mode, model name, weights Artifact)``."""
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.train.weights import load_model

    artifact = resolve(model, "weights")
    if artifact.kind != "weights":
        raise DFNError(f"{model}: export needs PyTorch weights (.safetensors/.pt) or a shipped model name, "
                       f"not a {artifact.kind} file")
    net, name = load_model(artifact.path)
    return net, name, artifact


def onnx_from_torch(model, opset: int = DEFAULT_OPSET, exporter: str = "legacy", sample_hw: tuple[int, int] = (64, 64)):
    """Export ``model`` (NCHW float32 in [0, 1] -> NCHW) to an ``onnx.ModelProto`` with dynamic H/W.

    ``exporter``: ``"legacy"`` (TorchScript, ``dynamo=False``; the default, as Ultralytics does, since
    the dynamo path has broken on dynamic resizes) or ``"dynamo"`` (``torch.export``). Both pass the
    parity suite on DeepFusionNet with torch 2.13.
    """
    import torch

    onnx = require("onnx", "export")
    x = torch.rand(1, 3, *sample_hw)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; we chose it on purpose
        if exporter == "legacy":
            buf = io.BytesIO()
            torch.onnx.export(model, (x,), buf, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {2: "height", 3: "width"}, OUTPUT: {2: "out_height", 3: "out_width"}},
                              do_constant_folding=True, dynamo=False)
            proto = onnx.load_from_string(buf.getvalue())
        elif exporter == "dynamo":
            h, w = torch.export.Dim("height", min=8, max=8192), torch.export.Dim("width", min=8, max=8192)
            name = next(iter(__import__("inspect").signature(model.forward).parameters))
            prog = torch.onnx.export(model, (x,), None, opset_version=max(opset, 18), input_names=[INPUT],
                                     output_names=[OUTPUT], dynamic_shapes={name: {2: h, 3: w}}, dynamo=True,
                                     optimize=True, verbose=False)
            proto = prog.model_proto
        else:
            raise DFNError(f"unknown exporter {exporter!r}; choose legacy or dynamo")
    return proto


def check(proto, what: str = "graph") -> None:
    """Run the ONNX checker (full check, with shape inference) or raise naming ``what``."""
    onnx = require("onnx", "export")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise DFNError(f"{what}: the ONNX checker rejected the exported graph ({str(exc).splitlines()[0][:300]})") from None


def simplify(proto):
    """Constant folding and dead-node removal with onnxslim; returns the input when slimming fails."""
    try:
        import onnxslim
    except ImportError:
        return proto
    try:
        slim = onnxslim.slim(proto)
    except Exception as exc:  # a simplifier bug must not block an export that is valid without it
        warnings.warn(f"onnxslim failed ({exc}); keeping the unsimplified graph", stacklevel=2)
        return proto
    # onnxslim (0.1.98) repeats each tensor's value_info a hash-seed-dependent number of times, so the same
    # weights gave a different file on every run (SR FP32: 0.55-0.69 MB); re-inferring makes it repeatable.
    return reinfer_shapes(slim)


def reinfer_shapes(proto, strict: bool = False):
    """Drop every value_info and infer the shapes once, in node order (the same graph gives the same bytes)."""
    onnx = require("onnx", "export")
    del proto.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(proto, strict_mode=strict)


def fix_input_size(proto, width: int, height: int):
    """Pin the input to ``1x3xHxW`` (ONNX Runtime's make_input_shape_fixed) and re-infer every shape."""
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    make_input_shape_fixed(proto.graph, INPUT, [1, 3, height, width])
    for out in proto.graph.output:  # output dims are re-derived by shape inference
        out.type.tensor_type.ClearField("shape")
    return reinfer_shapes(proto, strict=True)


def io_info(proto) -> dict:
    """Names, shapes (symbolic dims as strings) and dtypes of the graph's inputs and outputs."""
    onnx = require("onnx", "export")

    def describe(v) -> dict:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [describe(v) for v in proto.graph.input], "outputs": [describe(v) for v in proto.graph.output]}


def save(proto, path: str | Path) -> bytes:
    """Serialise ``proto`` and write it atomically; returns the bytes (for hashing)."""
    from deepfusionnet.runtime.images import atomic_write_bytes

    data = proto.SerializeToString()
    if len(data) > 2_000_000_000:
        raise DFNError(f"{path}: graph over 2 GB; external data is not supported")
    atomic_write_bytes(path, data)
    return data
