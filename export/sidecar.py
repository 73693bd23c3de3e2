"""What travels with an exported graph: ONNX metadata_props and the JSON sidecar beside the file.

The runtime reads ``dfn.*`` metadata when no sidecar exists (:mod:`deepfusionnet.runtime.artifacts`),
so a bare ``.onnx`` still runs with the right scale and padding; the sidecar holds everything else
(IO, hashes, tool versions, calibration settings, parity results). It is written through
:class:`deepfusionnet.runtime.sidecar.Sidecar`, the record the runtime reads it back as, so the export
never writes a sidecar the runtime would refuse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import time
from pathlib import Path

from deepfusionnet.runtime.sidecar import Sidecar, sidecar_path
from deepfusionnet.runtime.images import atomic_write_bytes

SCHEMA = 1


def set_metadata(proto, model: str, scale: int, multiple: int, precision: str,
                 exposure: str | None = None, task: str | None = None) -> None:
    """Write the ``dfn.*`` keys into ``proto.metadata_props`` (replacing earlier values).

    ``exposure``: the weights' exposure calibration as JSON (:mod:`deepfusionnet.runtime.exposure`).
    """
    values = {"dfn.model": model, "dfn.scale": str(scale), "dfn.multiple": str(multiple),
              "dfn.precision": precision}
    if exposure:
        values["dfn.exposure"] = exposure
    if task:
        values["dfn.task"] = task
    optional = ("dfn.exposure", "dfn.task")  # dropped when this export has none
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in values and p.key not in optional]
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
    for dist in ("deepfusionnet", "torch", "onnx", "onnxruntime", "onnxslim", "onnxconverter-common",
                 "openvino"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def write_sidecar(path: str | Path, info: Sidecar | dict) -> Path:
    """Write ``info`` (plus schema and creation time) as ``<path>.json``, atomically.

    A dict is checked as a :class:`~deepfusionnet.runtime.sidecar.Sidecar` first: what the export writes
    is what the runtime accepts.
    """
    target = sidecar_path(path)
    sidecar = info if isinstance(info, Sidecar) else Sidecar.from_dict(info, target)
    stamp = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    stamped = dataclasses.replace(sidecar, extra={**sidecar.extra, **stamp},
                                  order=("schema", "created", *sidecar.order))
    atomic_write_bytes(target, stamped.to_json())
    return target
