"""What a model does: the pairing of its input and target that `dfn eval` and training use."""

from __future__ import annotations

# What a model does, which decides how dfn eval (and training) pair an input with its target:
# enhance: low-light frame -> enhanced frame; sr: frame -> x2 frame (inputs are degraded targets);
# enhance-sr: low-light frame -> enhanced x2 frame (inputs are the low-light frames downscaled x2, as NEID).
TASKS = ("enhance", "sr", "enhance-sr")


def default_task(scale: int) -> str:
    """The task of a model that does not name one: enhancement at scale 1, else super-resolution."""
    return "enhance" if scale == 1 else "sr"
