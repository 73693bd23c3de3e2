"""The sample night frames that ship with the package: the quick start's input, the default frames of
export checks, and the real frame ``auto`` and ``bench`` gate precisions on.

They install as package data (``deepfusionnet.samples``, the repository's ``samples/``), so library
defaults never depend on a checkout or on a data set beside it.
"""

from __future__ import annotations

from pathlib import Path

from deepfusionnet.errors import DFNError

GATE_FRAME = "lol-22.png"


def sample_dir() -> Path:
    """The folder of shipped sample night frames."""
    from importlib.resources import files

    try:
        path = Path(str(files("deepfusionnet.samples") / "night"))
    except (ModuleNotFoundError, TypeError):
        path = Path(__file__).resolve().parents[1] / "samples" / "night"
    if not path.is_dir():
        raise DFNError(f"{path}: the shipped sample frames are missing; reinstall deepfusionnet")
    return path


def sample_frame() -> Path:
    """One real night frame (LOL-v1 eval15 image 22), for quality gates that need a real picture."""
    return sample_dir() / GATE_FRAME
