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
    """Everything the rest of the package needs to know about one backend, without importing it.

    The CLI's ``--backend`` choices, the default backend of an artifact, ``--backend auto``'s candidates
    and ``dfn bench``'s rows are all read from these entries, so a new backend is its own module plus
    one :func:`register` call (or one line in :data:`BACKENDS`).
    """

    loader: str  # "module:function"; the function takes (path, **options) -> Backend
    kind: str = ""  # the artifact kind of the files below; the first entry of a kind is its default backend
    suffixes: tuple[str, ...] = ()  # file suffixes of that kind (KIND_BY_SUFFIX is built from these)
    extra: str = ""  # pip extra that installs it: deepfusionnet[extra]
    description: str = ""
    reads: tuple[str, ...] = ()  # further artifact kinds it loads (OpenVINO reads ONNX graphs too)
    options: dict = field(default_factory=dict)  # given to every load (e.g. an ORT execution provider)
    row_options: dict = field(default_factory=dict)  # added for measured rows (bench, auto): pins a device
    precisions: dict = field(default_factory=lambda: {"fp32": {}})  # precision -> options selecting it
    variants: tuple[str, ...] = ()  # precisions it runs from a graph beside the FP32 one (X.fp16.onnx)
    isa: dict = field(default_factory=dict)  # precision -> (CPU features, any of which it needs; why)
    unsupported: dict = field(default_factory=dict)  # precision ("*": any but fp32) -> why not
    requires: str = ""  # Python module it needs (checked without importing it)
    provider: str = ""  # ONNX Runtime execution provider it needs
    threads: bool = True  # takes ``threads``
    device: bool = False  # takes ``device`` (``--device`` places it)
    cache: str = ""  # "": no compile cache; "optional": ``cache_dir`` when given; else a folder name
    auto: bool = False  # a candidate of ``--backend auto``
    cli: bool = True  # a ``--backend`` choice of dfn enhance / dfn eval

    @property
    def loads(self) -> tuple[str, ...]:
        """Every artifact kind it can load."""
        return ((self.kind,) if self.kind else ()) + self.reads


_ORT = "deepfusionnet.runtime.backends.onnxruntime:load"
_CPU_FP16 = (("avx512_fp16", "amx_fp16", "asimdhp"),
             "this CPU has no FP16 arithmetic (AVX512_FP16/AMX-FP16/Arm FP16)")

# Registered by dotted path so nothing heavy is imported until a backend is used. The torch backend
# lives with the models in train/ (runtime never imports torch). One line per backend.
BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(
        _ORT, "onnx", (".onnx",), "gpu",
        "ONNX Runtime (CPU; CUDA/TensorRT EPs when onnxruntime-gpu is installed)",
        row_options={"providers": ["CPUExecutionProvider"]}, variants=("fp16", "int8"),
        unsupported={"bf16": "ONNX Runtime CPU has no BF16 path"}, requires="onnxruntime", auto=True),
    "openvino": BackendEntry(
        "deepfusionnet.runtime.backends.openvino:load", "openvino", (".xml",), "openvino",
        "OpenVINO (x86/ARM CPUs, Intel GPUs)", reads=("onnx",),
        precisions={"fp32": {"precision": "f32"}, "bf16": {"precision": "bf16"},
                    "fp16": {"precision": "f16"}},
        variants=("fp16", "int8"), requires="openvino", cache="optional", auto=True,
        isa={"bf16": (("avx512_bf16", "amx_bf16"), "this CPU has no BF16 instructions (AVX512_BF16/AMX)"),
             "fp16": _CPU_FP16}),
    "tensorrt": BackendEntry(
        "deepfusionnet.runtime.backends.tensorrt:load", "engine", (".engine", ".plan", ".trt"), "trt",
        "TensorRT engine, named-tensor API", variants=("fp16", "int8"), requires="tensorrt", threads=False),
    "torch": BackendEntry(
        "deepfusionnet.train.torch_backend:load", "weights", (".safetensors", ".pt", ".pth"), "train",
        "PyTorch eager reference", unsupported={"*": "PyTorch rows are the FP32 eager reference only"},
        requires="torch", device=True),
    "ort-cuda": BackendEntry(
        _ORT, reads=("onnx",), extra="gpu", description="ONNX Runtime's CUDA execution provider",
        options={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}, variants=("fp16", "int8"),
        unsupported={"bf16": "BF16 rows are CPU-only here"}, requires="onnxruntime",
        provider="CUDAExecutionProvider", threads=False, auto=True),
    "ort-trt": BackendEntry(
        _ORT, reads=("onnx",), extra="gpu", description="ONNX Runtime's TensorRT execution provider "
        "(not the native tensorrt backend)", options={"trt_ep": True}, variants=("fp16", "int8"),
        unsupported={"bf16": "BF16 rows are CPU-only here"}, requires="onnxruntime",
        provider="TensorrtExecutionProvider", threads=False, cache="trt"),
}


def register(name: str, entry: BackendEntry) -> None:
    """Add (or replace) a backend: from then on it is a ``--backend`` choice, an auto candidate (when
    ``entry.auto``) and a bench backend."""
    BACKENDS[name] = entry


def backend_names(cli: bool = False) -> list[str]:
    """Every registered backend (``cli``: only the ``--backend`` choices of enhance and eval)."""
    return [name for name, e in BACKENDS.items() if e.cli or not cli]


def entry(name: str) -> BackendEntry:
    try:
        return BACKENDS[name]
    except KeyError:
        raise DFNError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None


def kind_by_suffix() -> dict[str, str]:
    """Artifact kind by file suffix, from the registry (the first entry naming a suffix owns it)."""
    out: dict[str, str] = {}
    for e in BACKENDS.values():
        for suffix in e.suffixes:
            out.setdefault(suffix, e.kind)
    return out


def default_backend(kind: str) -> str:
    """The backend that runs an artifact of ``kind`` when the user names none: the first that owns the
    kind, else the first that reads it, else ONNX Runtime."""
    for owns in (True, False):
        for name, e in BACKENDS.items():
            if (e.kind == kind) if owns else (kind in e.reads):
                return name
    return "onnxruntime"


def shipped_kind(name: str) -> str | None:
    """Which file of a shipped model backend ``name`` loads: ``"weights"`` for a backend of weights
    files, else None (the ONNX graph, :func:`~deepfusionnet.runtime.artifacts.resolve`'s default)."""
    e = BACKENDS.get(name)
    return "weights" if e is not None and e.kind == "weights" else None


def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine (its module or execution provider is missing),
    or None; checked without importing the backend."""
    import importlib.util

    e = entry(name)
    if e.requires:
        try:
            missing = importlib.util.find_spec(e.requires) is None
        except (ImportError, ValueError):  # blocked in sys.modules (None) or a broken install
            missing = True
        if missing:
            return f"{e.requires} is not installed"
    if e.provider:
        try:
            import onnxruntime as ort

            providers = ort.get_available_providers()
        except ImportError:
            providers = []
        if e.provider not in providers:
            return f"no {e.provider} on this machine"
    return None


def load_backend(name: str, path: str | Path, **options) -> Backend:
    """Load ``path`` with backend ``name`` (one of :data:`BACKENDS`) and the entry's own options."""
    e = entry(name)
    module_name, func = e.loader.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DFNError(
            f"backend {name!r} is not available ({exc}); "
            f"install it with: pip install 'deepfusionnet[{e.extra}]'"
        ) from None
    return getattr(module, func)(Path(path), **{**e.options, **options})


def first_input(backend: Backend) -> TensorInfo:
    return backend.inputs[0]
