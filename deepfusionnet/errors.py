"""The project's user-facing error types.

The CLI prints a :class:`DFNError` as one line on stderr and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib
import re


class DFNError(Exception):
    """A user error: bad input, missing file, missing extra. ``str(err)`` is the whole message."""

    exit_code = 1


class MissingExtraError(DFNError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, what: str | None = None):
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a broken native library
        need = what or module.split(".")[0]
        raise MissingExtraError(
            f"{need} is not installed ({exc}); install it with: pip install 'deepfusionnet[{extra}]'"
        ) from None


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:\s*)?")
_OV_CHECK = re.compile(r"^Check '.*?' failed at \S+:\d+:?\s*")  # OpenVINO's assertion and its location
_CPP_WHERE = re.compile(r"\S*\.(?:cc|cpp|cxx|h|hpp):\d+\s+(?:[\w:~<>,&*]+(?:\s[\w:~<>,&*]+)*\(.*\)\s+)?")


def native_reason(exc: BaseException, limit: int = 300) -> str:
    """The human part of a native library's exception text (ONNX Runtime, OpenVINO, TensorRT), on one line.

    Their messages put C++ source locations and function signatures before the reason ("Unsupported
    model IR version: 99, ...") and may spread the reason over lines (ONNX Runtime's "Got invalid
    dimensions for input: input for the following indices / index: 2 Got: 400 Expected: 480"), so
    drop those locations from every line, join what is left, and when it is still too long keep its end
    rather than its start.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    kept = [_CPP_WHERE.sub("", _OV_CHECK.sub("", _ORT_PREFIX.sub("", ln))).strip() for ln in lines]
    kept = [ln for ln in kept if ln and not ln.startswith("Exception from src/")] or lines[-1:]
    text = " ".join(kept)
    return text if len(text) <= limit else "..." + text[-limit:]
