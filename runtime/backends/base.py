"""The one contract every inference backend implements, and the registry of backends by name.

Parity, benchmarks, evaluation and the CLI talk only to :class:`Backend`; each engine lives in its
own module and is imported only when asked for, so ``import deepfusionnet.runtime`` needs neither
torch nor TensorRT.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from deepfusionnet.errors import DFNError


@dataclass(frozen=True)
class TensorInfo:
    """A named input or output; ``None`` or a string marks a dynamic dimension."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@runtime_checkable
class Backend(Protocol):
    """Load an artifact, describe its IO, run ``{name: array} -> {name: array}``, close."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's loader lives and which artifact suffixes it accepts."""

    loader: str  # "module:function"; the function takes (path, **options) -> Backend
    suffixes: tuple[str, ...]
    extra: str
    description: str = ""
    options: dict = field(default_factory=dict)


# Registered by dotted path so nothing heavy is imported until a backend is used. The torch backend
# lives with the models in train/ (runtime never imports torch).
BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry("deepfusionnet.runtime.backends.onnxruntime:load", (".onnx",), "gpu",
                                "ONNX Runtime (CPU; CUDA/TensorRT EPs when onnxruntime-gpu is installed)"),
    "openvino": BackendEntry("deepfusionnet.runtime.backends.openvino:load", (".onnx", ".xml"), "openvino",
                             "OpenVINO (x86/ARM CPUs, Intel GPUs)"),
    "tensorrt": BackendEntry("deepfusionnet.runtime.backends.tensorrt:load", (".engine", ".plan", ".trt"), "trt",
                             "TensorRT engine, named-tensor API"),
    "torch": BackendEntry("deepfusionnet.train.torch_backend:load", (".safetensors", ".pt", ".pth"), "train",
                          "PyTorch eager reference"),
}


def backend_names() -> list[str]:
    return list(BACKENDS)


def load_backend(name: str, path: str | Path, **options) -> Backend:
    """Load ``path`` with backend ``name`` (one of :data:`BACKENDS`)."""
    try:
        entry = BACKENDS[name]
    except KeyError:
        raise DFNError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None
    module_name, func = entry.loader.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DFNError(
            f"backend {name!r} is not available ({exc}); install it with: pip install 'deepfusionnet[{entry.extra}]'"
        ) from None
    return getattr(module, func)(Path(path), **options)


def first_input(backend: Backend) -> TensorInfo:
    return backend.inputs[0]
