"""Results files hold repository-relative paths (``../shared/...`` for the data), never machine paths."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_ROOT = REPO.parent  # the repository and ../shared beside it


def portable(path) -> str:
    """``path`` relative to the repository."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), REPO)).as_posix()
    except (TypeError, ValueError):
        return str(path)


def portable_tree(obj):
    """A copy of a JSON-like result with every absolute path under the checkout's parent made portable."""
    if isinstance(obj, dict):
        return {k: portable_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_tree(v) for v in obj]
    if isinstance(obj, Path) or (isinstance(obj, str) and obj.startswith(str(_ROOT) + os.sep)):
        return portable(obj)
    return obj
