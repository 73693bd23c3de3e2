"""OpenVINO backend: reads ``.onnx`` directly (or ``.xml`` IR) and compiles one static model per input shape.

Static shapes let the CPU plugin pick its fastest (blocked-layout, brgemm) kernels; the compiled
models are cached per shape in memory (a few camera modes, least recently used dropped first) and, with
``cache_dir``, on disk, so a second process skips the compile.

Options: ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``"f32"`` (exact), ``"bf16"`` (x86
CPUs with AVX512_BF16 or AMX; OpenVINO's default on AMX machines), ``"f16"`` (Arm CPUs, GPUs), or
``None`` for the plugin's default. ``threads`` caps ``INFERENCE_NUM_THREADS`` (default: ``DFN_THREADS``
or every core); ``hint`` is the ``PERFORMANCE_HINT`` (``LATENCY`` for one frame at a time).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from deepfusionnet.errors import DFNError, native_reason, require
from deepfusionnet.runtime.backends.base import TensorInfo

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
MAX_SHAPES = 4  # compiled models kept in memory


def _dims(pshape) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in pshape)


def _read_model(ov, core, path: Path):
    """Read ``.onnx`` through OpenVINO's ONNX frontend only and ``.xml`` through its IR frontend only.

    ``core.read_model`` tries every frontend in turn, and on a file that is not valid ONNX or IR its
    TensorFlow frontend prints absl "Error parsing text-format" lines straight to stderr.
    """
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx" if path.suffix.lower() == ".onnx" else "ir")
    return frontend.convert(frontend.load(str(path)))


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, path: Path, precision: str | None = None, threads: int | None = None,
                 hint: str = "LATENCY", cache_dir: str | Path | None = None, device: str = "CPU") -> None:
        ov = require("openvino", "openvino", "openvino")
        if not path.exists():
            raise DFNError(f"{path}: no such file")
        if precision is not None and precision not in PRECISIONS:
            raise DFNError(f"openvino: unknown precision {precision!r}; choose one of: bf16, f16, f32")
        self.core = ov.Core()
        try:
            self.model = _read_model(ov, self.core, path)
        except Exception as exc:  # OpenVINO raises a generic RuntimeError with a long C++ trace
            raise DFNError(f"{path}: not a model OpenVINO can read ({native_reason(exc)})") from None
        self.path = path
        self.device = device
        self.precision = PRECISIONS.get(precision) if precision else None
        threads = threads or int(os.environ.get("DFN_THREADS", "0")) or None
        self.config: dict = {"PERFORMANCE_HINT": hint}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if self.precision:
            self.config["INFERENCE_PRECISION_HINT"] = self.precision
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.core.set_property({"CACHE_DIR": str(cache_dir)})
        self.inputs = [TensorInfo(p.get_any_name(), _dims(p.get_partial_shape()), p.get_element_type().to_dtype().name)
                       for p in self.model.inputs]
        self.outputs = [TensorInfo(p.get_any_name(), _dims(p.get_partial_shape()), p.get_element_type().to_dtype().name)
                        for p in self.model.outputs]
        self._compiled: OrderedDict[tuple, tuple] = OrderedDict()

    def _request(self, shapes: dict[str, tuple]):
        key = tuple(sorted(shapes.items()))
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit[1]
        model = self.model.clone()
        if any(None in i.shape or any(isinstance(d, str) for d in i.shape) for i in self.inputs):
            model.reshape({name: list(shape) for name, shape in shapes.items()})
        try:
            compiled = self.core.compile_model(model, self.device, self.config)
        except Exception as exc:
            raise DFNError(f"{self.path}: OpenVINO cannot compile it for {self.device} at "
                           f"{list(shapes.values())} ({native_reason(exc)})") from None
        request = compiled.create_infer_request()
        self._compiled[key] = (compiled, request)
        while len(self._compiled) > MAX_SHAPES:
            self._compiled.popitem(last=False)
        return request

    def execution_precision(self) -> str | None:
        """The precision the plugin actually runs (its resolved ``INFERENCE_PRECISION_HINT``)."""
        if not self._compiled:
            return self.precision
        compiled = next(reversed(self._compiled.values()))[0]
        try:
            value = compiled.get_property("INFERENCE_PRECISION_HINT")
            return value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()
        except Exception:
            return self.precision

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dtypes = {i.name: i.dtype for i in self.inputs}
        feed = {k: np.ascontiguousarray(v, dtype=dtypes.get(k, v.dtype)) for k, v in feed.items()}
        request = self._request({k: tuple(v.shape) for k, v in feed.items()})
        result = request.infer(feed)
        # By position: a compiled port can carry several names (an FP16 graph's output has "output" and
        # "/Sigmoid_cast_to_output"), and get_any_name() may pick the one the caller never saw.
        return {info.name: np.asarray(v) for info, v in zip(self.outputs, result.values())}

    def close(self) -> None:
        self._compiled.clear()
        self.model = None


def load(path: Path, **options) -> OpenVinoBackend:
    refuse_qat(path)
    return OpenVinoBackend(path, **options)


def refuse_qat(path: Path) -> None:
    """A one-line error for graphs from quantization-aware weights (``dfn train --qat``): OpenVINO 2026.4
    computes them wrongly (16.7-17.6 dB from ONNX Runtime's output on the same graph, with the f32 hint
    too; the first wrong tensor is a CBAM's shared MLP on its max-pooled branch), so it must not run them
    silently. ONNX Runtime and TensorRT run them."""
    from deepfusionnet.runtime.artifacts import read_sidecar

    calibration = read_sidecar(path).extra.get("calibration")
    if isinstance(calibration, dict) and calibration.get("method") == "qat":
        raise DFNError(f"{path}: OpenVINO computes graphs of quantization-aware weights wrongly (measured "
                       "with OpenVINO 2026.4); run it with --backend onnxruntime or a TensorRT engine")
