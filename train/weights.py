"""Weights as safetensors (no pickle), tagged with the model name so a mismatch is a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from deepfusionnet.errors import DFNError
from deepfusionnet.train.models import create_model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(model: nn.Module, name: str, path: str | Path, extra: dict | None = None) -> None:
    """Atomically save ``model``'s state dict as safetensors with ``{"model": name}`` metadata."""
    from safetensors.torch import save_file

    from deepfusionnet.runtime.images import atomic_write_bytes

    path = Path(path)
    meta = {"model": name, **{k: str(v) for k, v in (extra or {}).items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise DFNError(f"{path}: not a readable safetensors file ({exc})") from None


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict: safetensors, or a legacy ``.pt`` through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise DFNError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise DFNError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DFNError(f"{path}: cannot load as weights ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise DFNError(f"{path}: does not hold a state dict")
    return obj


def load_model(path: str | Path, name: str | None = None) -> tuple[nn.Module, str]:
    """Build the model named in the file's metadata (or ``name``) and load the weights strictly."""
    path = Path(path)
    meta = read_metadata(path) if path.suffix == ".safetensors" and path.is_file() else {}
    model_name = name or meta.get("model")
    if model_name is None:
        raise DFNError(f"{path}: no model name in the file; pass --arch deepfusionnet or deepfusionnet-sr")
    model = create_model(model_name)
    state = load_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = sum(1 for line in str(exc).splitlines() if "Missing" in line or "size mismatch" in line)
        raise DFNError(
            f"{path}: weights do not fit model {model_name!r} (wrong architecture or a different model's weights; "
            f"{missing or 'several'} mismatching entries)"
        ) from None
    return model.eval(), model_name
