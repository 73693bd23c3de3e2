"""Exposure gate: an enhancer's output blended with its input when the input needs no enhancement.

An enhancer trained on dark frames brightens every frame it gets; a camera running through dusk, street
lights and headlights also sends it frames that are already well exposed. The gate keeps the input then:

    y' = x + w * (y - x),   w = 1 - smoothstep(lo, hi, median brightness of x)

The median, not the mean, so that a night scene under a bright sky or a lamp still counts as dark. One
weight per frame: a per-region weight (keeping lamps and lit windows as they are) was tried and left
out, because it leaves dark halos where a kept bright region meets brightened surroundings
(benchmarks/experiments.md). The weight is computed on the whole input frame, once, before anything is
tiled, so tiles cannot disagree on it. Applied by the runtime's shared post-processing to the output of
every backend; enhancement models only (task ``enhance``). ``lo`` and ``hi`` are the 95th percentile of
LOL training low-light frames' medians and the 1st percentile of their normal-light frames' medians.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from deepfusionnet.errors import DFNError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
SMALL_SIDE = 64  # the median is taken on a copy of the frame with this short side


def smoothstep(lo: float, hi: float, v: np.ndarray | float) -> np.ndarray:
    t = np.clip((np.asarray(v, np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def median_brightness(x: np.ndarray) -> float:
    """Median luma of one float CHW frame in [0, 1], on a small copy (the same for any tiling)."""
    luma = np.tensordot(LUMA, np.clip(x, 0.0, 1.0), axes=1)
    h, w = luma.shape
    f = min(1.0, SMALL_SIDE / min(h, w))
    small = cv2.resize(luma, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return float(np.median(small))


@dataclass(frozen=True)
class ExposureGate:
    lo: float = 0.10  # frames whose median brightness is below this get the network's output in full
    hi: float = 0.20  # frames whose median brightness is above this pass through unchanged

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi <= 1:
            raise DFNError(f"exposure gate out of range: {asdict(self)} (need 0 <= lo < hi <= 1)")

    def weight(self, x: np.ndarray) -> np.ndarray:
        """The network output's weight for each frame of float NCHW ``x`` in [0, 1]: ``(N, 1, 1, 1)``."""
        w = [1.0 - float(smoothstep(self.lo, self.hi, median_brightness(frame))) for frame in x]
        return np.asarray(w, np.float32).reshape(-1, 1, 1, 1)

    def apply(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``y`` (the network's output for ``x``, same size) with the input kept where ``x`` is well exposed."""
        if x.shape != y.shape:
            raise ValueError(f"the exposure gate needs the output at the input's size: {x.shape} vs {y.shape}")
        w = self.weight(x)
        if (w == 1.0).all():
            return y
        return x + w * (y - x)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def parse_gate(value, where: str) -> ExposureGate | None:
    """An :class:`ExposureGate` from metadata (a dict or its JSON text); ``None`` when absent or "off"."""
    if value in (None, "", {}, "off"):
        return None
    try:
        doc = json.loads(value) if isinstance(value, str) else dict(value)
        return ExposureGate(**{k: float(v) for k, v in doc.items()})
    except (ValueError, TypeError) as exc:
        raise DFNError(f"{where}: unreadable exposure gate {value!r} ({exc})") from None
