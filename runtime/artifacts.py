"""What a model argument names: a shipped model, a weights file, an ONNX graph or an engine.

Every artifact may carry a JSON sidecar beside it (``X.onnx`` -> ``X.onnx.json``) written by the
export/build stages; ONNX graphs also carry the essentials in their metadata, so a bare ``.onnx``
still runs with the right padding multiple and scale.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.backends.base import kind_by_suffix
from deepfusionnet.runtime.images import file_problem
from deepfusionnet.runtime.exposure import Exposure, parse_exposure
from deepfusionnet.runtime.tasks import TASKS, default_task  # noqa: F401  (TASKS re-exported)
from deepfusionnet.runtime.sidecar import Sidecar, sidecar_path  # noqa: F401  (sidecar_path: re-exported)

WEIGHTS_DIR = Path(__file__).parent / "weights"


def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (tensor entries and ``__metadata__``), read without the
    safetensors package (the runtime may not have it)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise DFNError(f"{path}: not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise DFNError(f"{path}: not a readable safetensors file (its header is not a JSON object)")
    return header


def safetensors_metadata(path: str | Path) -> dict:
    """The ``__metadata__`` of a safetensors file; empty when unreadable (the loader says why)."""
    try:
        return dict(safetensors_header(path).get("__metadata__") or {})
    except (DFNError, TypeError, ValueError):
        return {}


def _shipped_models() -> dict[str, tuple[int, int, str]]:
    """The core models, plus every other weights file in the package that names itself, its scale and its
    multiple in its metadata (the seed methods' weights): adding one is adding its file."""
    shipped = {
        "deepfusionnet": (1, 8, "DeepFusionNet low-light enhancer (2.6M params)"),
        "deepfusionnet-sr": (2, 8, "DeepFusionNet 2x super-resolution (110K params)"),
    }
    for path in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        meta = safetensors_metadata(path)
        if path.stem in shipped or meta.get("model") != path.stem:
            continue
        try:
            described = meta.get("description", path.stem)
            shipped[path.stem] = (int(meta["scale"]), int(meta["multiple"]), described)
        except (KeyError, ValueError):
            continue
    return shipped


# Shipped models: name -> (scale, multiple, description)
SHIPPED: dict[str, tuple[int, int, str]] = _shipped_models()


@dataclass(frozen=True)
class Artifact:
    path: Path
    kind: str  # onnx | openvino | engine | weights
    model: str  # architecture name, e.g. "deepfusionnet"
    scale: int = 1
    multiple: int = 8
    precision: str = "fp32"
    sidecar: Sidecar = field(default_factory=Sidecar, compare=False, repr=False)
    exposure: Exposure | None = None  # applied to the whole output by the Enhancer
    task: str = "enhance"  # one of TASKS

    def __post_init__(self) -> None:
        if self.scale != 1 and self.task == "enhance":
            object.__setattr__(self, "task", default_task(self.scale))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sidecar(path: str | Path) -> Sidecar:
    """The JSON sidecar beside ``path`` (an empty :class:`~deepfusionnet.runtime.sidecar.Sidecar` when
    there is none), checked field by field."""
    return Sidecar.read(path)


def checked_metadata(doc, where: str | Path) -> Sidecar:
    """``doc`` (a sidecar, or the ``dfn.*`` metadata of an ONNX or safetensors file) checked as a
    :class:`~deepfusionnet.runtime.sidecar.Sidecar`; a damaged or hostile one is a one-line error naming
    ``where`` and the field."""
    return Sidecar.from_dict(doc, where)


def _overlaid(base: Sidecar, top: Sidecar, where: str | Path) -> Sidecar:
    """``base`` with every field ``top`` records put over it (a sidecar over a file's own metadata)."""
    return Sidecar.from_dict({**base.to_dict(), **top.to_dict()}, where)


def shipped_path(name: str, kind: str) -> Path:
    suffix = {"onnx": ".onnx", "weights": ".safetensors"}[kind]
    return WEIGHTS_DIR / f"{name}{suffix}"


def _onnx_metadata(path: Path) -> dict:
    """dfn.* metadata props of an ONNX file, read without onnx (the runtime may not have it)."""
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return dict(sess.get_modelmeta().custom_metadata_map)
    except Exception:
        return {}


def resolve(model: str | Path, kind: str | None = None) -> Artifact:
    """Resolve a model argument to an :class:`Artifact`.

    ``kind`` picks the artifact for a shipped name: ``"onnx"`` (default) or ``"weights"`` (torch).
    """
    text = str(model)
    if text in SHIPPED:
        scale, multiple, _ = SHIPPED[text]
        if kind is None:  # the graph; a model shipped as weights alone (the seed methods) runs from those
            graph, weights = shipped_path(text, "onnx"), shipped_path(text, "weights")
            kind = "onnx" if graph.is_file() or not weights.is_file() else "weights"
        path = shipped_path(text, kind)
        if not path.is_file():
            raise DFNError(f"shipped model {text!r} has no {kind} file at {path}; reinstall deepfusionnet")
        meta = (read_sidecar(path) if kind != "weights"
                else checked_metadata(safetensors_metadata(path), path))
        return Artifact(path, kind, text, scale, multiple, "fp32", meta,
                        parse_exposure(meta.exposure, str(path)), meta.task or default_task(scale))
    path = Path(text)
    if path.is_dir():
        raise DFNError(f"{path}: is a folder; name a model file (.onnx, .engine, .safetensors) or a shipped model")
    problem = file_problem(path)
    if problem == "no such file":
        known = ", ".join(SHIPPED)
        raise DFNError(f"{path}: no such file, and not a shipped model name ({known})")
    if problem:  # a FIFO would block the engine's open; a link loop is not "no such file"
        raise DFNError(f"{path}: {problem}")
    akind = kind_by_suffix().get(path.suffix.lower())  # each backend's entry names its suffixes
    if akind is None:
        raise DFNError(f"{path}: unknown model file type {path.suffix!r} (expected .onnx, .xml, .engine, .safetensors)")
    meta = read_sidecar(path)
    if akind == "onnx" and meta.empty:
        props = _onnx_metadata(path)
        meta = checked_metadata({k.removeprefix("dfn."): v for k, v in props.items() if k.startswith("dfn.")},
                                f"{path} (its dfn.* metadata)")
    if akind == "weights" and path.suffix == ".safetensors":
        meta = _overlaid(checked_metadata(safetensors_metadata(path), f"{path} (its metadata)"), meta,
                         sidecar_path(path))
    name = meta.model if meta.model is not None else "deepfusionnet"
    scale = meta.scale or SHIPPED.get(name, (1, 8, ""))[0]
    multiple = meta.multiple or SHIPPED.get(name, (1, 8, ""))[1]
    precision = meta.precision if meta.precision is not None else "fp32"
    return Artifact(path, akind, name, scale, multiple, precision, meta,
                    parse_exposure(meta.exposure, str(path)), meta.task or default_task(scale))
