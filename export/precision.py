"""Precision in the graph: FP32 ONNX -> FP16 ONNX (onnxconverter-common) or INT8 Q/DQ ONNX (ONNX Runtime).

TensorRT 11 has no FP16/INT8 builder switches and no implicit calibrators, so precision must live in
the ONNX graph; TensorRT 10 (JetPack 6) builds the same graphs strongly typed. Both conversions keep
FP32 inputs/outputs and keep the numerically fragile nodes in FP32:

- FP16: the global (spatial) ReduceMean/ReduceMax of CBAM attention (a mean over a whole frame),
  any node whose FP32 activations were measured above ``data_max`` on real frames, and any node
  with a weight the converter would clamp (|w| >= 1e4, e.g. a BatchNorm running variance of 1.8e5:
  clamped, it rescaled that layer's output and cost a trained model 30 dB of FP16 parity).
- INT8: symmetric (zero point 0, as TensorRT requires) per-channel weights and per-tensor activations,
  calibrated on real night frames; the full-resolution convolutions (input stage and last decoder
  stage), the output head (last conv + sigmoid) and the attention convs stay in floating point, as
  INT8 in them visibly shifts colours of enhancement/SR nets; further stages stay float where the
  accuracy-driven search of :mod:`.int8_fallback` finds INT8 moving the output.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from deepfusionnet.errors import DFNError, require

FP16_MAX = 65504.0
# onnxconverter-common clamps initializers to +-1e4 (its max_finite_val), well inside FP16's range.
FP16_WEIGHT_MAX = 1e4
CALIB_METHODS = ("minmax", "entropy", "percentile")


# -- graph structure ------------------------------------------------------------------------------

def producers(graph) -> dict:
    """Each tensor name -> the node that writes it."""
    return {o: n for n in graph.node for o in n.output}


def input_convs(graph) -> list[str]:
    """Convolutions that read a graph input directly (the first layer)."""
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]


def output_head(graph) -> list[str]:
    """Nodes from each graph output back to, and including, the nearest convolution (conv + sigmoid)."""
    prod, seen, out = producers(graph), set(), []
    stack = [o.name for o in graph.output]
    while stack:
        node = prod.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        out.append(node.name)
        if node.op_type != "Conv":
            stack.extend(node.input)
    return out


def spatial_reductions(graph) -> list[str]:
    """ReduceMean/ReduceMax nodes over H and W (global pooling): a sum over a whole frame."""
    out = []
    for n in graph.node:
        if n.op_type in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2"):
            axes = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
            if axes is None or {a % 4 for a in axes} & {2, 3}:  # axes as an input (opset 18+): assume spatial
                out.append(n.name)
    return out


# -- FP16 -----------------------------------------------------------------------------------------

def large_weight_nodes(graph, limit: float = FP16_WEIGHT_MAX) -> list[str]:
    """Nodes reading a float initializer with a finite value of magnitude ``>= limit``.

    The FP16 converter would clamp such a value to ``limit``; for a BatchNorm variance or mean that
    silently changes the layer, so these nodes stay in FP32.
    """
    from onnx import TensorProto, numpy_helper

    large = set()
    for init in graph.initializer:
        if init.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            v = numpy_helper.to_array(init)
            v = v[np.isfinite(v)]
            if v.size and float(np.abs(v).max()) >= limit:
                large.add(init.name)
    return [n.name for n in graph.node if large.intersection(n.input)]


def activation_peaks(proto, feeds: Iterable[dict]) -> dict[str, float]:
    """Largest absolute value of every intermediate tensor of the FP32 graph over ``feeds``."""
    onnx = require("onnx", "export")
    import onnxruntime as ort

    probe = onnx.shape_inference.infer_shapes(proto)
    known = {o.name for o in probe.graph.output}
    for vi in probe.graph.value_info:
        if vi.name not in known and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            probe.graph.output.append(vi)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor visible
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peaks: dict[str, float] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            v = float(np.max(np.abs(value))) if value.size else 0.0
            peaks[name] = max(peaks.get(name, 0.0), v)
    return peaks


def fp16_from_onnx(proto, block_nodes: Iterable[str] = (), block_ops: Iterable[str] = (),
                   peaks: dict[str, float] | None = None, data_max: float = FP16_MAX / 8):
    """Convert an FP32 graph to FP16 with FP32 inputs/outputs; returns ``(proto, nodes kept FP32)``.

    Kept in FP32: spatial reductions, nodes with weights the converter would clamp
    (:func:`large_weight_nodes`), nodes named in ``block_nodes``, nodes whose output peak (from
    :func:`activation_peaks`) exceeds ``data_max`` (headroom: TensorRT may fuse ops and see larger
    intermediates than ONNX Runtime does), and every node of an op type in ``block_ops``.
    """
    require("onnx", "export")
    float16 = require("onnxconverter_common.float16", "export", "onnxconverter-common")

    keep = set(block_nodes) | set(spatial_reductions(proto.graph)) | set(large_weight_nodes(proto.graph))
    if peaks:
        keep |= {n.name for n in proto.graph.node if any(peaks.get(o, 0.0) > data_max for o in n.output)}
    model = type(proto)()
    model.CopyFrom(proto)
    # Stale FP32 value_info makes the converter emit a Cast whose declared type contradicts its output.
    del model.graph.value_info[:]
    try:
        with warnings.catch_warnings():
            # One warning per tiny weight raised to 1e-7: noise. Large weights never reach the clamp:
            # their nodes are in ``keep``, so the converter leaves their initializers FP32.
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(
                model, max_finite_val=FP16_WEIGHT_MAX, keep_io_types=True,
                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(block_ops), node_block_list=sorted(keep))
    except Exception as exc:
        raise DFNError(f"FP16 conversion failed ({str(exc).splitlines()[0][:300]})") from None
    return half, sorted(keep)


# -- INT8 calibration ---------------------------------------------------------------------------

def calibration_images(folder: str | Path, count: int, skip: Iterable[Path] = ()) -> list[Path]:
    """``count`` images spread evenly over ``folder`` (sorted, so the choice is reproducible), leaving
    out ``skip`` (frames already used, e.g. for calibration; may leave none)."""
    from deepfusionnet.runtime.measure.pairs import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DFNError(f"{folder}: calibration folder not found")
    skipped = set(skip)
    paths = [p for p in list_images(folder) if p not in skipped]
    if not paths and not skipped:
        raise DFNError(f"{folder}: no calibration images found")
    if count and len(paths) > count:
        idx = np.linspace(0, len(paths) - 1, count).round().astype(int)
        paths = [paths[i] for i in sorted(set(idx))]
    return paths


def calibration_frame(path: Path, width: int, height: int, multiple: int = 8) -> np.ndarray:
    """Read ``path`` through the runtime, cover-resize and centre-crop it to ``width`` x ``height``."""
    import cv2

    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import pad_to_multiple, to_tensor

    img = read_image(path)
    h, w = img.shape[:2]
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    x, _ = pad_to_multiple(to_tensor(np.ascontiguousarray(img[y0:y0 + height, x0:x0 + width])), multiple)
    return x


def check_frame(path: Path, multiple: int = 8, max_pixels: int = 1280 * 720) -> np.ndarray:
    """Read ``path`` through the runtime at its own size (area-downscaled above ``max_pixels``), padded
    to ``multiple``: INT8 errors that decide a frame's exposure show at full size more than on
    calibration-sized crops (session 10: 4 of 254 frames below 32 dB at 600x400, 1 at 320x240)."""
    import cv2

    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import pad_to_multiple, to_tensor

    img = read_image(path)
    h, w = img.shape[:2]
    if h * w > max_pixels:
        s = (max_pixels / (h * w)) ** 0.5
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return pad_to_multiple(to_tensor(img), multiple)[0]


def calibration_reader(paths: list[Path], input_name: str, width: int, height: int, multiple: int = 8,
                       bar=None):
    """An ONNX Runtime ``CalibrationDataReader`` over night frames (class built here: import stays light).

    ``bar``: a tqdm-like progress bar advanced once per frame served."""
    from onnxruntime.quantization import CalibrationDataReader

    class FrameReader(CalibrationDataReader):
        # (H, W) of every frame served: the calibration size padded to the multiple
        frame_size = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)

        def __init__(self) -> None:
            self._it = iter(paths)

        def __len__(self) -> int:
            return len(paths)

        def get_next(self) -> dict | None:
            path = next(self._it, None)
            if path is None:
                return None
            if bar is not None:
                bar.update(1)
            return {input_name: calibration_frame(path, width, height, multiple)}

        def set_range(self, start_index: int, end_index: int) -> None:
            """Serve frames ``start_index:end_index`` only (ONNX Runtime's chunked calibration)."""
            self._it = iter(paths[start_index:end_index])

        def rewind(self) -> None:
            self._it = iter(paths)

    return FrameReader()


def activation_bytes(proto, height: int, width: int, op_types: Iterable[str] = ("Conv",)) -> int | None:
    """Bytes of the activations ONNX Runtime's calibrators keep for one (1, 3, height, width) FP32 frame:
    every input and output of the calibrated op types. Shapes from ONNX shape inference, else from one
    ONNX Runtime run of a single frame; None when neither works."""
    import math

    import onnx

    from deepfusionnet.runtime.measure.macs import tensor_shapes_by_running

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, height, width)):
        d.ClearField("dim_param")
        d.dim_value = v
    weights = {i.name for i in model.graph.initializer}
    names = sorted({t for n in model.graph.node if n.op_type in set(op_types)
                    for t in (*n.input, *n.output) if t and t not in weights})
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
    except Exception:  # noqa: BLE001 - best effort; one run below is exact
        pass
    missing = [n for n in names if n not in shapes]
    if missing:
        try:
            shapes.update(tensor_shapes_by_running(model, missing, height, width, "the graph"))
        except DFNError:
            return None
    return sum(math.prod(shapes[n]) * 4 for n in names)


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def frames_per_chunk(proto, frame_size: tuple[int, int], most: int, share: float = 0.25) -> int:
    """How many calibration frames fit in ``share`` of the free memory at once (at most ``most``): ONNX
    Runtime's histogram calibrators hold a chunk's activations about twice over while merging them (MIRNet-v2:
    3.2 GiB per 320x240 frame, so the default chunk of 8 was killed for memory on a 23 GiB machine). A graph
    whose single frame does not fit is a one-line error asking for a smaller ``--calib-size``."""
    per_frame, free = activation_bytes(proto, *frame_size), available_memory()
    if not per_frame or not free:
        return most
    fit = int(free * share // per_frame)
    if fit < 1:
        h, w = frame_size
        raise DFNError(f"INT8 calibration keeps about {per_frame / 2**30:.1f} GiB of activations per "
                       f"{w}x{h} frame, more than {share:.0%} of the {free / 2**30:.1f} GiB free; give a smaller "
                       f"--calib-size")
    return min(most, fit)


def calibration_chunk(count: int, most: int) -> int:
    """Largest divisor of ``count`` not above ``most`` (ONNX Runtime needs equal chunks)."""
    return max(d for d in range(1, max(1, min(count, most)) + 1) if count % d == 0)


def int8_from_onnx(proto, reader, method: str = "percentile", exclude: Iterable[str] | None = None,
                   op_types: Iterable[str] | None = ("Conv",), percentile: float = 99.999, chunk: int = 8,
                   calibration_cache: Path | None = None):
    """Quantize an FP32 graph to explicit, symmetric INT8 Q/DQ with ONNX Runtime's ``quantize_static``.

    ``exclude`` defaults to :func:`default_int8_exclusions`; ``op_types`` to convolutions only
    (TensorRT fuses Q/DQ into convs; elementwise attention ops stay in float). Both measured best on
    eval15 among: all op types, with/without exclusions, MinMax/Entropy/Percentile calibration. Returns
    ``(proto, excluded node names, calibration method used)``.

    ``chunk``: frames run per calibration pass when the reader has ``__len__`` and ``set_range``
    (ONNX Runtime's ``CalibStridedMinMax``, which feeds every method's collector chunk by chunk). The
    calibrators otherwise hold every frame's intermediate tensors at once: 8.6 GB resident for the
    default 32 frames at 320x240 (DeepFusionNet), 2.6 GB in chunks of 8.

    ``calibration_cache``: a file for ONNX Runtime's calibration cache; when it exists its ranges are
    used and ``reader`` is not read (the fallback search quantizes one graph many times).
    """
    onnx = require("onnx", "export")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise DFNError(f"unknown calibration method {method!r}; choose one of: {', '.join(CALIB_METHODS)}")
    exclude = default_int8_exclusions(proto.graph) if exclude is None else sorted(exclude)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    # QuantizeBias off: biases stay float. ONNX Runtime otherwise stores them as INT32 behind a
    # DequantizeLinear, which TensorRT's parser refuses (it dequantizes only INT8/FP8/INT4); TensorRT
    # fuses the float bias into the INT8 convolution itself.
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    cached = calibration_cache is not None and Path(calibration_cache).is_file()  # then no frame is read
    if chunk and hasattr(reader, "frame_size") and not cached:  # bounded by one frame's activations
        chunk = frames_per_chunk(proto, reader.frame_size, chunk)
    if chunk and hasattr(reader, "set_range") and hasattr(reader, "__len__") and len(reader) > chunk:
        extra["CalibStridedMinMax"] = calibration_chunk(len(reader), chunk)
    with tempfile.TemporaryDirectory(prefix="dfn-int8-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        from deepfusionnet.export.onnx import unshare_weights

        onnx.save(unshare_weights(proto), src)  # shared conv weights break ONNX Runtime's INT8 graph
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the graph as is
            pre = src
        kwargs = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                      per_channel=True, op_types_to_quantize=list(op_types) if op_types else None,
                      nodes_to_exclude=exclude)
        if calibration_cache is not None:
            kwargs["calibration_cache_path"] = str(calibration_cache)
        used = method
        quiet = contextlib.redirect_stdout(io.StringIO())  # ONNX Runtime prints its calibration steps to stdout
        try:
            with quiet:
                quantize_static(str(pre), str(dst), reader, calibrate_method=calib, extra_options=extra, **kwargs)
        except ValueError as exc:
            if method == "minmax" or "bins" not in str(exc):
                raise DFNError(f"INT8 quantization failed ({str(exc).splitlines()[0][:300]})") from None
            # Histogram methods fail on a tensor with an (almost) empty range, e.g. a dead channel of an
            # untrained model; MinMax handles it.
            reader.rewind()
            used = f"minmax (fallback: {method} failed: {str(exc).splitlines()[0][:120]})"
            minmax = {k: v for k, v in extra.items() if k != "CalibPercentile"}
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(dst), reader, calibrate_method=CalibrationMethod.MinMax,
                                extra_options=minmax, **kwargs)
        except Exception as exc:
            raise DFNError(f"INT8 quantization failed ({str(exc).splitlines()[0][:300]})") from None
        return onnx.load(dst), exclude, used


def attention_convs(graph) -> list[str]:
    """Convolutions of attention branches (CBAM's MLP and 7x7 spatial conv): they read globally or
    channel-pooled tensors, cost almost no MACs, and feed sigmoid gates that scale whole feature maps."""
    prod = producers(graph)
    pooled = ("ReduceMean", "ReduceMax")

    def from_pool(tensor: str, depth: int) -> bool:
        node = prod.get(tensor)
        if node is None or depth > 3:
            return False
        if node.op_type in pooled:
            return True
        if node.op_type == "Concat":
            return any(from_pool(t, depth + 1) for t in node.input)
        return node.op_type in ("Relu", "Conv") and from_pool(node.input[0], depth + 1)

    return [n.name for n in graph.node if n.op_type == "Conv" and from_pool(n.input[0], 0)]


def resolution_levels(graph) -> dict[str, int]:
    """Each tensor's scale relative to the graph input: 0 = full resolution, +1 per 2x pooling or
    strided conv, -1 per 2x resize (structure only; a node takes the largest level of its inputs)."""
    inits = _initializers(graph)
    level = {i.name: 0 for i in graph.input if i.name not in inits}
    for node in graph.node:  # ONNX nodes are topologically sorted
        feeds = [level[t] for t in node.input if t in level]
        if not feeds:
            continue
        lv = max(feeds)
        if node.op_type in ("MaxPool", "AveragePool"):
            lv += 1
        elif node.op_type == "Conv":
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
            lv += 1 if max(strides) > 1 else 0
        elif node.op_type in ("Resize", "Upsample"):
            lv -= 1
        for out in node.output:
            level[out] = lv
    return level


def full_resolution_convs(graph) -> list[str]:
    """Convolutions whose output is at (or above) the input's resolution: the input stage and the
    last decoder stage (DeepFusionNet: GhostHead, stem, dec3; about 25% of the MACs)."""
    level = resolution_levels(graph)
    return [n.name for n in graph.node if n.op_type == "Conv" and level.get(n.output[0], 1) <= 0]


def conv_names(graph) -> list[str]:
    return [n.name for n in graph.node if n.op_type == "Conv"]


def conv_stage(name: str) -> str:
    """The stage a conv node belongs to: the first component of its module path, else the node itself."""
    parts = name.split("/")
    return parts[1] if name.startswith("/") and len(parts) > 2 else name


def matching_convs(graph, patterns: Iterable[str]) -> list[str]:
    """Convs whose node name contains any of ``patterns`` (the ``--keep-float``/``--quantize`` match)."""
    patterns = tuple(patterns)
    return [c for c in conv_names(graph) if any(p in c for p in patterns)]


def _initializers(graph) -> set[str]:
    return {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}


def int8_exclusions(graph, keep_float: Iterable[str] = (), quantize: Iterable[str] = ()) -> list[str]:
    """:func:`default_int8_exclusions` adjusted by the user: convs whose node name contains a
    ``keep_float`` pattern stay float too; nodes whose name contains a ``quantize`` pattern are
    quantized after all. A pattern that matches no convolution is an error (a typo would otherwise
    silently change nothing)."""
    for pat in (*keep_float, *quantize):
        if not matching_convs(graph, [pat]):
            stages = sorted({conv_stage(c) for c in conv_names(graph) if conv_stage(c) != c})
            raise DFNError(f"INT8: {pat!r} matches no convolution; node names look like "
                           f"'/dec1/convs/convs.0/convs.0.0/Conv' (stages: {', '.join(stages)})")
    out = set(default_int8_exclusions(graph)) | set(matching_convs(graph, keep_float))
    return sorted(n for n in out if not any(p in n for p in quantize))


def default_int8_exclusions(graph) -> list[str]:
    """Nodes INT8 leaves in float by structure: full-resolution convs, the output head and attention
    convs. Which other stages stay float is measured per model (:mod:`.int8_fallback`).

    Measured on eval15 (worst of the images vs FP32). Interim weights, 3 images: quantizing every conv
    28.4 dB; keeping only the first convs and the head float 30.3 dB; plus attention convs 31.8 dB;
    plus the whole input stage 35.9 dB (the darkest frames use few INT8 levels in the first layers).
    A later model (session 6, 15 images): with the input stage float, 28.3 dB: on one brighter frame
    (748) the activations entering the full-resolution decoder stage ran 2-5x past the ranges
    calibrated on train/low; with every full-resolution conv float, 35.1 dB (mean 47.4).
    """
    return sorted(set(full_resolution_convs(graph)) | set(output_head(graph)) | set(attention_convs(graph)))
