"""What travels with an exported graph: ONNX metadata_props and the JSON sidecar beside the file.

The runtime reads ``dfn.*`` metadata when no sidecar exists (:mod:`deepfusionnet.runtime.artifacts`),
so a bare ``.onnx`` still runs with the right scale and padding; the sidecar holds everything else
(IO, hashes, tool versions, calibration settings, parity results).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from deepfusionnet.runtime.artifacts import sidecar_path
from deepfusionnet.runtime.images import atomic_write_bytes

SCHEMA = 1


def set_metadata(proto, model: str, scale: int, multiple: int, precision: str,
                 exposure: str | None = None) -> None:
    """Write the ``dfn.*`` keys into ``proto.metadata_props`` (replacing earlier values).

    ``exposure``: the weights' exposure calibration as JSON (:mod:`deepfusionnet.runtime.exposure`).
    """
    values = {"dfn.model": model, "dfn.scale": str(scale), "dfn.multiple": str(multiple), "dfn.precision": precision}
    if exposure:
        values["dfn.exposure"] = exposure
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in values and p.key != "dfn.exposure"]
    del proto.metadata_props[:]
    for k, v in keep + list(values.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "deepfusionnet"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tool_versions() -> dict:
    """Versions of everything that shaped the graph."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("deepfusionnet", "torch", "onnx", "onnxruntime", "onnxslim", "onnxconverter-common", "openvino"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def write_sidecar(path: str | Path, info: dict) -> Path:
    """Write ``info`` (plus schema and creation time) as ``<path>.json``, atomically."""
    doc = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    target = sidecar_path(path)
    atomic_write_bytes(target, (json.dumps(doc, indent=2, default=str) + "\n").encode())
    return target
