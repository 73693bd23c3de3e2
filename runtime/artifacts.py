"""What a model argument names: a shipped model, a weights file, an ONNX graph or an engine.

Every artifact may carry a JSON sidecar beside it (``X.onnx`` -> ``X.onnx.json``) written by the
export/build stages; ONNX graphs also carry the essentials in their metadata, so a bare ``.onnx``
still runs with the right padding multiple and scale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import file_problem
from deepfusionnet.runtime.exposure import Exposure, parse_exposure

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Shipped models: name -> (scale, multiple, description)
SHIPPED: dict[str, tuple[int, int, str]] = {
    "deepfusionnet": (1, 8, "DeepFusionNet low-light enhancer (2.6M params)"),
    "deepfusionnet-sr": (2, 8, "DeepFusionNet 2x super-resolution (110K params)"),
}

KIND_BY_SUFFIX = {".onnx": "onnx", ".xml": "openvino", ".engine": "engine", ".plan": "engine", ".trt": "engine",
                  ".safetensors": "weights", ".pt": "weights", ".pth": "weights"}


@dataclass(frozen=True)
class Artifact:
    path: Path
    kind: str  # onnx | openvino | engine | weights
    model: str  # architecture name, e.g. "deepfusionnet"
    scale: int = 1
    multiple: int = 8
    precision: str = "fp32"
    sidecar: dict = field(default_factory=dict, compare=False, repr=False)
    exposure: Exposure | None = None  # applied to the whole output by the Enhancer


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict:
    """The JSON sidecar beside ``path`` (``{}`` when there is none), checked against
    :data:`SIDECAR_SCHEMA`."""
    sc = sidecar_path(path)
    if not sc.is_file():
        return {}
    try:
        doc = json.loads(sc.read_text())
    except (OSError, ValueError) as exc:
        raise DFNError(f"{sc}: unreadable sidecar, not valid JSON ({exc})") from None
    return checked_metadata(doc, sc)


def _integer(lo: int, hi: int | None = None):
    """A field check: an integer (or its decimal text, as ONNX metadata stores it) from ``lo`` to ``hi``."""
    expected = f"an integer from {lo} to {hi}" if hi is not None else f"an integer of at least {lo}"

    def check(value):
        if isinstance(value, bool):
            raise ValueError(expected)
        try:
            number = int(value) if isinstance(value, (int, str)) else value
        except ValueError:
            raise ValueError(expected) from None
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not isinstance(number, int) or number < lo or (hi is not None and number > hi):
            raise ValueError(expected)
        return number

    return check


def _of_type(*types: type, expected: str):
    def check(value):
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(expected)
        return value

    return check


def _tensor_list(value):
    ok = isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                         and isinstance(t.get("shape"), list) for t in value)
    if not ok:
        raise ValueError('a list of {"name": ..., "shape": [...], "dtype": ...}')
    return value


# The fields the runtime acts on, each with its check (returning the value to use). Unknown fields are
# kept as they are: a sidecar also carries provenance nobody reads back.
SIDECAR_SCHEMA = {
    "model": _of_type(str, expected="a model name (text)"),
    "precision": _of_type(str, expected="a precision name such as fp32 (text)"),
    "scale": _integer(1, 16),
    "multiple": _integer(1, 4096),
    "params": _integer(0),
    "engine_bytes": _integer(0),
    "engine_sha256": _of_type(str, expected="a sha256 in hex"),
    "tensorrt": _of_type(str, expected="a TensorRT version (text)"),
    "exposure": _of_type(dict, str, expected="an exposure calibration {slope, centre, offset}"),
    "parity": _of_type(dict, list, expected="parity results (an object or a list)"),
    "gpu": _of_type(dict, expected="an object"),
    "onnx": _of_type(dict, expected="an object"),
    "build": _of_type(dict, expected="an object"),
    "inputs": _tensor_list,
    "outputs": _tensor_list,
}


def checked_metadata(doc, where: str | Path) -> dict:
    """``doc`` (a sidecar, or the ``dfn.*`` metadata of an ONNX or safetensors file) checked against
    :data:`SIDECAR_SCHEMA`; a damaged or hostile one is a one-line error naming ``where`` and the field."""
    if not isinstance(doc, dict):
        raise DFNError(f"{where}: not a model sidecar: expected a JSON object such as "
                       f'{{"model": "deepfusionnet", "scale": 1, "multiple": 8}}, found {type(doc).__name__}')
    out = dict(doc)
    for key, check in SIDECAR_SCHEMA.items():
        if out.get(key) is None:
            out.pop(key, None)  # null counts as absent
            continue
        try:
            out[key] = check(out[key])
        except ValueError as exc:
            shown = repr(out[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise DFNError(f"{where}: \"{key}\" is {shown}; expected {exc}") from None
    return out


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


def _safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file; empty when unreadable (the loader reports that properly)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def resolve(model: str | Path, kind: str | None = None) -> Artifact:
    """Resolve a model argument to an :class:`Artifact`.

    ``kind`` picks the artifact for a shipped name: ``"onnx"`` (default) or ``"weights"`` (torch).
    """
    text = str(model)
    if text in SHIPPED:
        scale, multiple, _ = SHIPPED[text]
        kind = kind or "onnx"
        path = shipped_path(text, kind)
        if not path.is_file():
            raise DFNError(f"shipped model {text!r} has no {kind} file at {path}; reinstall deepfusionnet")
        meta = (read_sidecar(path) if kind != "weights"
                else checked_metadata(_safetensors_metadata(path), path))
        return Artifact(path, kind, text, scale, multiple, "fp32", meta,
                        parse_exposure(meta.get("exposure"), str(path)))
    path = Path(text)
    if path.is_dir():
        raise DFNError(f"{path}: is a folder; name a model file (.onnx, .engine, .safetensors) or a shipped model")
    problem = file_problem(path)
    if problem == "no such file":
        known = ", ".join(SHIPPED)
        raise DFNError(f"{path}: no such file, and not a shipped model name ({known})")
    if problem:  # a FIFO would block the engine's open; a link loop is not "no such file"
        raise DFNError(f"{path}: {problem}")
    akind = KIND_BY_SUFFIX.get(path.suffix.lower())
    if akind is None:
        raise DFNError(f"{path}: unknown model file type {path.suffix!r} (expected .onnx, .xml, .engine, .safetensors)")
    meta = read_sidecar(path)
    if akind == "onnx" and not meta:
        props = _onnx_metadata(path)
        meta = checked_metadata({k.removeprefix("dfn."): v for k, v in props.items() if k.startswith("dfn.")},
                                f"{path} (its dfn.* metadata)")
    if akind == "weights" and path.suffix == ".safetensors":
        meta = {**checked_metadata(_safetensors_metadata(path), f"{path} (its metadata)"), **meta}
    name = str(meta.get("model", "deepfusionnet"))
    scale = int(meta.get("scale", SHIPPED.get(name, (1, 8, ""))[0]))
    multiple = int(meta.get("multiple", SHIPPED.get(name, (1, 8, ""))[1]))
    return Artifact(path, akind, name, scale, multiple, str(meta.get("precision", "fp32")), meta,
                    parse_exposure(meta.get("exposure"), str(path)))
