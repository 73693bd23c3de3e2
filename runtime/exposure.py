"""Exposure calibration: one global gain per frame, applied to a model's whole (stitched) output.

A low-light frame does not say how bright its well-lit version was (LOL's ground-truth means span
0.25-0.63 for inputs of 0.03-0.10), so an enhancer guesses. Measured on the shipped enhancer's own
training frames, its guesses spread too far: the brighter it makes a frame, the more the frame
overshoots. The calibration pulls the output's log mean brightness toward the training average,

    y' = y * exp(offset + slope * (log(mean(clip(y, 0, 1)) + 1e-4) - centre)),

with the three numbers fitted by least squares on training frames (``deepfusionnet.train.exposure``)
and carried with the weights: safetensors metadata, the ONNX ``dfn.exposure`` property and every
sidecar. The gain is computed on the whole output, after tiling, so tiles cannot disagree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from deepfusionnet.errors import DFNError

EPS = 1e-4


def log_brightness(y: np.ndarray) -> np.ndarray:
    """``log(mean(clip(y, 0, 1)) + EPS)`` of each frame of NCHW ``y``, shape ``(N, 1, 1, 1)``."""
    return np.log(np.clip(y, 0.0, 1.0).mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64) + EPS)


@dataclass(frozen=True)
class Exposure:
    slope: float  # d log(gain) / d log(mean output); negative pulls toward the centre
    centre: float  # training frames' mean of log(mean output + EPS)
    offset: float  # log gain at the centre

    def gain(self, y: np.ndarray) -> np.ndarray:
        """Per-frame gain for NCHW ``y``, shape ``(N, 1, 1, 1)``."""
        return np.exp(self.offset + self.slope * (log_brightness(y) - self.centre)).astype(np.float32)

    def apply(self, y: np.ndarray) -> np.ndarray:
        """``y`` (float NCHW, a model's output) scaled by its frame's gain."""
        return y * self.gain(y)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def parse_exposure(value, where: str) -> Exposure | None:
    """An :class:`Exposure` from metadata (a dict or its JSON text); ``None`` when absent."""
    if value in (None, "", {}):
        return None
    try:
        doc = json.loads(value) if isinstance(value, str) else dict(value)
        exp = Exposure(float(doc["slope"]), float(doc["centre"]), float(doc["offset"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise DFNError(f"{where}: unreadable exposure calibration {value!r} ({exc})") from None
    if not all(math.isfinite(v) for v in (exp.slope, exp.centre, exp.offset)) or not -1.0 < exp.slope < 1.0:
        raise DFNError(f"{where}: exposure calibration out of range {asdict(exp)} (slope must be in (-1, 1))")
    return exp
