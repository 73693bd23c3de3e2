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


def load_source(model: str | Path, weights: str | Path | None = None, scale: int | None = None,
                multiple: int | None = None):
    """What ``dfn export`` exports -> ``(nn.Module in eval mode, model name, weights Artifact)``.

    ``model`` is a shipped model name or a weights file; or, with ``weights``, a registered model name or
    a ``package.module:function`` entry point (a user's own network, registered here under that string,
    with ``scale`` and ``multiple`` declared once: here or on the function). The Artifact names a weights
    file that tells the runtime's torch reference (the parity check) which network to build and how to pad
    and scale: the file itself when it says so already, else a tagged copy (:func:`_tagged`).
    """
    from deepfusionnet.runtime.artifacts import SHIPPED, resolve
    from deepfusionnet.train.models.registry import entry_point_spec, get_spec, is_entry_point, model_names
    from deepfusionnet.train.weights import load_model

    text = str(model)
    user = is_entry_point(text)
    if (scale is not None or multiple is not None) and not user:
        raise DFNError("--scale and --multiple declare a model defined outside deepfusionnet "
                       f"(package.module:function); {text} declares its own")
    if weights is None:
        if user:
            raise DFNError(f"{text}: a model defined outside deepfusionnet needs its weights: add --weights "
                           "FILE (.safetensors or a .pt state dict)")
        if text not in SHIPPED and text in model_names() and not Path(text).exists():
            raise DFNError(f"{text}: no trained weights ship for this model yet; train them with dfn train "
                           f"--model {text} --data DIR, or pass --weights FILE")
        artifact = resolve(model, "weights")
        if artifact.kind != "weights":
            raise DFNError(f"{model}: export needs PyTorch weights (.safetensors/.pt) or a shipped model "
                           f"name, not a {artifact.kind} file")
        net, name = load_model(artifact.path)
        return net, name, _tagged(artifact, get_spec(name))
    suffix = Path(text).suffix.lower()
    looks_like_file = Path(text).is_file() or suffix in {".safetensors", ".pt", ".pth", ".onnx"}
    if not user and looks_like_file:
        raise DFNError(f"{text}: with --weights, MODEL names the network: a registered model "
                       f"({', '.join(model_names())}) or package.module:function")
    spec = entry_point_spec(text, scale, multiple) if user else get_spec(text)
    artifact = resolve(weights, "weights")
    if artifact.kind != "weights":
        raise DFNError(f"{weights}: --weights needs PyTorch weights (.safetensors/.pt), not a "
                       f"{artifact.kind} file")
    net, name = load_model(artifact.path, name=spec.name)
    if user:
        _probe(net.eval(), spec)
    return net, name, _tagged(artifact, spec)


def _probe(net, spec) -> None:
    """Run a user's network once on a small frame of its declared multiple: a wrong ``multiple`` or
    ``scale`` is a one-line error here, not a shape error deep in the parity check or on the device."""
    import torch

    m = spec.multiple
    h = m * -(-24 // m)  # at least 24 px, and the width one multiple more: odd sizes catch an undeclared one
    w = h + m
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            y = net(x)
    except Exception as exc:  # the user's forward: any failure is theirs to see, in one line
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DFNError(f"{spec.name}: the model failed on a 1x3x{h}x{w} input ({line}); if it needs sizes "
                       "that are multiples of N, declare --multiple N") from None
    want = (1, 3, h * spec.scale, w * spec.scale)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != want:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise DFNError(f"{spec.name}: a 1x3x{h}x{w} input gave {got}, expected {want} for scale "
                       f"{spec.scale}; the model must return one RGB tensor (declare --scale for a "
                       "super-resolution model)")


def _tagged(artifact, spec):
    """``artifact`` when the runtime reads ``spec``'s model, scale and multiple from its file; else an
    Artifact of a tagged safetensors copy (same name, same tensors) in a temporary folder removed with the
    Artifact. Either way ``sidecar.extra["source_file"]`` names the user's file (the export's provenance)."""
    import dataclasses
    import shutil
    import tempfile
    import weakref

    import torch
    from safetensors.torch import save_file

    from deepfusionnet.train.weights import load_state, read_metadata

    path = Path(artifact.path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    # The runtime builds the model its metadata names (load_model) and pads and scales as resolve() says.
    if meta.get("model") == spec.name and (artifact.scale, artifact.multiple) == (spec.scale, spec.multiple):
        # "source_file" is set here, never taken from the file's own metadata (the sidecar hashes that file)
        extra = {**artifact.sidecar.extra, "source_file": str(path)}
        return dataclasses.replace(artifact, sidecar=dataclasses.replace(artifact.sidecar, extra=extra))
    tags = {"model": spec.name, "scale": str(spec.scale), "multiple": str(spec.multiple)}
    folder = Path(tempfile.mkdtemp(prefix="dfn-export-"))
    copy = folder / f"{path.stem}.safetensors"
    try:
        # one copy per entry: safetensors refuses entries that share memory (a .pt of a MIRNet)
        state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in load_state(path).items()}
        save_file(state, str(copy), metadata={**meta, **tags})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    sidecar = dataclasses.replace(artifact.sidecar, model=spec.name, scale=spec.scale, multiple=spec.multiple,
                                  extra={**artifact.sidecar.extra, "source_file": str(path)})
    tagged = dataclasses.replace(artifact, path=copy, model=spec.name, scale=spec.scale,
                                 multiple=spec.multiple, sidecar=sidecar)
    weakref.finalize(tagged, shutil.rmtree, folder, ignore_errors=True)
    return tagged


def onnx_from_torch(model, opset: int = DEFAULT_OPSET, exporter: str = "legacy",
                    sample_hw: tuple[int, int] = (64, 64), extra_inputs: dict | None = None, output: str = OUTPUT):
    """Export ``model`` (NCHW float32 in [0, 1] -> NCHW) to an ``onnx.ModelProto`` with dynamic H/W.

    ``exporter``: ``"legacy"`` (TorchScript, ``dynamo=False``; the default, as Ultralytics does, since
    the dynamo path has broken on dynamic resizes) or ``"dynamo"`` (``torch.export``). Both pass the
    parity suite on DeepFusionNet with torch 2.13. ``extra_inputs``: further named inputs after the image
    (name -> sample tensor of fixed shape); ``output``: the output's name (an image output has dynamic H/W).
    """
    import torch

    onnx = require("onnx", "export")
    extra = extra_inputs or {}
    x = torch.rand(1, 3, *sample_hw)
    args = (x, *extra.values())
    names = [INPUT, *extra]
    out_axes = {2: "out_height", 3: "out_width"} if output == OUTPUT else {}
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; we chose it on purpose
        if exporter == "legacy":
            buf = io.BytesIO()
            torch.onnx.export(model, args, buf, opset_version=opset, input_names=names, output_names=[output],
                              dynamic_axes={INPUT: {2: "height", 3: "width"}, **({output: out_axes} if out_axes else {})},
                              do_constant_folding=True, dynamo=False)
            proto = onnx.load_from_string(buf.getvalue())
        elif exporter == "dynamo":
            h, w = torch.export.Dim("height", min=8, max=8192), torch.export.Dim("width", min=8, max=8192)
            params = list(__import__("inspect").signature(model.forward).parameters)
            shapes = {params[0]: {2: h, 3: w}, **{p: None for p in params[1:len(args)]}}
            prog = torch.onnx.export(model, args, None, opset_version=max(opset, 18), input_names=names,
                                     output_names=[output], dynamic_shapes=shapes, dynamo=True,
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


def unshare_weights(proto, op_types: tuple[str, ...] = ("Conv", "ConvTranspose")):
    """A copy of ``proto`` in which every ``op_types`` node reads initializers of its own.

    A module applied twice (MIRNet's DAUs and RCBs run in both columns of a block) exports as one weight
    initializer read by two convolutions, and ONNX Runtime's quantizer then writes one quantized weight
    for both. ONNX Runtime's exact INT8 mode (``session.x64quantprecision``, which the export's search,
    its parity check and the runtime all use) converts each convolution's weight when it loads the graph
    and fails on the second ("Attempt to replace the existing tensor"). With a copy per node each
    convolution is quantized, or kept float, on its own; the copies cost one byte per weight in INT8.
    """
    onnx = require("onnx", "export")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: t for t in out.graph.initializer}
    readers: dict[str, int] = {}
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits or node.op_type not in op_types:
                continue
            readers[name] = readers.get(name, 0) + 1
            if readers[name] > 1:  # the first reader keeps the original
                copy = out.graph.initializer.add()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{readers[name]}"
                node.input[i] = copy.name
    return out


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
