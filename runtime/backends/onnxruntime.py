"""ONNX Runtime backend: CPU by default; CUDA (and the TensorRT EP) when onnxruntime-gpu has them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepfusionnet.errors import DFNError, native_reason, require
from deepfusionnet.runtime.backends.base import TensorInfo


def exact_int8(so) -> None:
    """Ask ONNX Runtime for exact INT8 convolutions on x86 CPUs without VNNI.

    There (SSE4.1, AVX2, AVX-512 without VNNI) ORT's default U8S8 kernels add pairs of 8-bit products in
    16 bits, which saturate: a Q/DQ graph can then score many dB below what it scores on a VNNI CPU or a
    GPU (a test graph here: 14.7 dB against FP32 on an AVX2 Zen 3, 100 dB with this). The session key
    ``session.x64quantprecision`` = ``"1"`` (``kOrtSessionOptionsAvx2PrecisionMode`` in ORT's
    onnxruntime_session_options_config_keys.h, ORT 1.32) switches them to slower U8U8 kernels; it has no
    effect on other CPUs. The export's INT8 search and parity check and every runtime session use it,
    so an INT8 file is judged and run by what it computes, not by the CPU it was checked on."""
    so.add_session_config_entry("session.x64quantprecision", "1")


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int64)": "int64"}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, providers: list | None = None, threads: int | None = None,
                 optimization: str = "all", provider_options: dict | None = None,
                 trt_ep: bool = False, cache_dir: str | Path | None = None) -> None:
        ort = require("onnxruntime", "gpu", "onnxruntime")
        if not path.exists():
            raise DFNError(f"{path}: no such file")
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        so.intra_op_num_threads = threads or int(os.environ.get("DFN_THREADS", "0")) or (os.cpu_count() or 1)
        so.log_severity_level = 3
        exact_int8(so)
        available = ort.get_available_providers()
        if trt_ep:
            providers = tensorrt_ep_providers(available, path, cache_dir)
        elif providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        if provider_options:
            providers = [(p, provider_options.get(p, {})) if isinstance(p, str) else p for p in providers]
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise DFNError(f"{path}: not a valid ONNX model for ONNX Runtime ({native_reason(exc)})") from None
        self.path = path
        self.providers = self.session.get_providers()
        self.inputs = [TensorInfo(i.name, tuple(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()]
        self.outputs = [TensorInfo(o.name, tuple(o.shape), _ORT_TYPES.get(o.type, o.type)) for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def close(self) -> None:
        self.session = None


def tensorrt_ep_providers(available: list[str], path: Path, cache_dir: str | Path | None = None) -> list:
    """Provider list for ONNX Runtime's TensorRT EP with engine and timing caches (onnxruntime-gpu 1.17+).

    Option names checked against onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html.
    ``trt_fp16_enable`` stays off: precision is in the graph, so the EP builds strongly typed
    (microsoft/onnxruntime#24298). CUDA then CPU take whatever TensorRT does not.
    """
    if "TensorrtExecutionProvider" not in available:
        raise DFNError("ONNX Runtime's TensorRT execution provider is not available here (providers: "
                       f"{', '.join(available)}); install onnxruntime-gpu built with TensorRT and TensorRT itself")
    cache = Path(cache_dir) if cache_dir else path.parent / ".trt-ep-cache"
    cache.mkdir(parents=True, exist_ok=True)
    trt_options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": False,
    }
    rest = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return [("TensorrtExecutionProvider", trt_options), *rest]


def load(path: Path, **options) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(path, **options)
