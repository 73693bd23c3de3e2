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
_CPP_WHERE = re.compile(r"\S*\.(?:cc|cpp|cxx|h|hpp):\d+\s+(?:[\w:~<>,&*]+(?:\s[\w:~<>,&*]+)*\(.*\)\s+)?")


def native_reason(exc: BaseException, limit: int = 300) -> str:
    """The human part of a native library's exception text (ONNX Runtime, OpenVINO, TensorRT).

    Their messages put C++ source locations and function signatures before the reason ("Unsupported
    model IR version: 99, ..."), so keep the last line without those, and when it is still too long,
    its end rather than its start.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = _CPP_WHERE.sub("", _ORT_PREFIX.sub("", lines[-1])).strip() or lines[-1]
    return text if len(text) <= limit else "..." + text[-limit:]
