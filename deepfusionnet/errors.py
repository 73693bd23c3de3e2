"""The project's user-facing error types.

The CLI prints a :class:`DFNError` as one line on stderr and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib


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
