"""Weights as safetensors (no pickle), tagged with the model name so a mismatch is a clear error.

Legacy ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``: plain tensors and
containers only, so a file that needs arbitrary Python objects is refused, never executed.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from deepfusionnet.errors import DFNError
from deepfusionnet.train.models import create_model
from deepfusionnet.runtime.artifacts import file_sha256  # noqa: F401  (re-exported)

# Keys under which training frameworks nest the state dict in a legacy checkpoint (BasicSR: params_ema).
_NESTED_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "generator")




def save_weights(model: nn.Module, name: str, path: str | Path, extra: dict | None = None) -> None:
    """Atomically save ``model``'s state dict as safetensors with ``{"model": name}`` metadata, plus the
    registered ``scale`` and ``multiple`` (the runtime reads them from the file: it has no registry)."""
    from safetensors.torch import save

    from deepfusionnet.runtime.images import atomic_write_bytes
    from deepfusionnet.train.models import get_spec

    try:
        spec = get_spec(name)
        shape = {"scale": spec.scale, "multiple": spec.multiple, "task": spec.task}
    except DFNError:  # not a registered name: the file carries the name alone, as before
        shape = {}
    from deepfusionnet.train.qat import QAT_TAG, is_quantized

    if is_quantized(model):  # the loader rebuilds the fake-quantized network from this tag
        shape["quantization"] = QAT_TAG
    meta = {"model": name, **{k: str(v) for k, v in {**shape, **(extra or {})}.items()}}
    # A copy per entry: safetensors refuses entries that share memory, and some networks reuse a module
    # under two names (MIRNet's DAUs, as in its official checkpoints).
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata=meta))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise DFNError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def load_pickle_safely(path: Path, unreadable: str):
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code. A pickle that
    needs another Python object is refused naming it; another unreadable file is ``unreadable`` with its
    ``{reason}`` filled in. Either way one line, without torch's advice to set ``weights_only=False``
    (which would run the file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on unusual pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            # The pickle needs a Python object beyond tensors and containers to load; unpickling
            # it could run arbitrary code, so it is refused.
            raise DFNError(
                f"{path}: refused, loading it needs the Python object {found.group(1)} (pickles can run arbitrary "
                "code); re-save it with torch.save(model.state_dict(), path) from code you trust, or convert it "
                "to .safetensors") from None
        raise DFNError(f"{path}: {unreadable.format(reason=_unpickling_reason(exc))}") from None


def _unpickling_reason(exc: Exception) -> str:
    """torch's own reason, without its boilerplate advice to set ``weights_only=False`` (to run the file)."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return _first_line(exc)
    after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    reason = next((ln.strip() for ln in after.splitlines() if ln.strip()), "")
    return f"not a PyTorch save of tensors: {reason[:160]}" if reason else "a pickle needing more than tensors"


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict: safetensors, or a legacy ``.pt`` through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise DFNError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise DFNError(f"{path}: empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise DFNError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    if head.startswith(b"\x08") or path.suffix == ".onnx":
        raise DFNError(f"{path}: looks like an ONNX model, not PyTorch weights")
    obj = load_pickle_safely(path, "not a readable weights file: neither safetensors nor a plain PyTorch "
                                   "state dict ({reason})")
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DFNError(f"{path}: does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Missing / unexpected / wrongly shaped entries, summarised in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = [f"{len(v)} {what} (e.g. {v[0]!r})" for what, v in
             (("missing", missing), ("unexpected", unexpected), ("with another shape", shaped)) if v]
    return "; ".join(parts)


def load_model(path: str | Path, name: str | None = None, default: str | None = None) -> tuple[nn.Module, str]:
    """Build the model named in the file's metadata (or ``name``) and load the weights strictly.

    ``name`` insists on a model (an error when the file says otherwise); ``default`` is used for files
    that carry no name (legacy ``.pt``, foreign safetensors). With neither, a nameless file is matched
    against every registered model and loaded into the one whose names and shapes it fits.
    """
    path = Path(path)
    if not path.is_file():
        raise DFNError(f"{path}: no such weights file")
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    saved = meta.get("model")
    if name and saved and name != saved:
        raise DFNError(f"{path}: holds {saved!r} weights, not {name!r}")
    state = load_state(path)  # refuses unsafe or corrupt files before anything else
    model_name = name or saved or default
    if model_name is None:
        model_name = _match_model(path, state)
    if model_name == "deepfusionnet-sr" and "sr_skip" not in state:
        model_name = "deepfusionnet-sr-paper"  # SR weights without the skip (no sr_skip): the paper's block
    model = create_model(model_name)
    from deepfusionnet.train.qat import is_qat_state, quantize_convs, with_offsets

    if is_qat_state(state, meta):  # dfn train --qat weights: the fake-quantized network, with its ranges
        quantize_convs(model)
        state = with_offsets(model, state)
    problems = _mismatch(model, state)
    if problems:
        raise DFNError(f"{path}: weights do not fit model {model_name!r} (a different model's weights?): {problems}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise DFNError(f"{path}: weights do not fit model {model_name!r} ({_first_line(exc)})") from None
    return model.eval(), model_name


def _match_model(path: Path, state: dict[str, torch.Tensor]) -> str:
    """The one registered model whose parameter names and shapes ``state`` fits exactly."""
    from deepfusionnet.train.models import model_names

    with torch.device("meta"):  # names and shapes only: no memory or init time for the large models
        fits = [n for n in model_names() if not _mismatch(create_model(n), state)]
    if len(fits) == 1:
        return fits[0]
    raise DFNError(f"{path}: no model name in the file and its tensors fit "
                   f"{'none' if not fits else 'several'} of the known models ({', '.join(model_names())})")
