"""Temporal smoothing of a video's global brightness: the output of each frame is scaled so its mean
brightness follows an exponential moving average of the recent outputs' means.

Each frame is enhanced on its own, so sensor noise moves the network's global statistics (its attention
pools over the whole frame) and the output's brightness can pump on a static scene. Scaling a whole
frame by one number cannot ghost: no pixel of an earlier frame reaches a later one. A scene cut (the
input's mean brightness jumps by more than ``cut_ratio``, e.g. headlights or a new shot) resets the
average, so the new scene is not dragged toward the old one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

EPS = 1e-4


def mean_brightness(x: np.ndarray) -> float:
    """Mean of a float NCHW (or CHW/HWC) frame in [0, 1], clipped: one number per frame."""
    return float(np.clip(x, 0.0, 1.0).mean(dtype=np.float64))


@dataclass
class BrightnessSmoother:
    """``smoother(x, y)`` -> ``y`` scaled toward the running brightness; one instance per stream.

    ``alpha``: weight of the newest frame in the average (1 = no smoothing). ``cut_ratio``: an input
    whose mean brightness differs from the previous input's by more than this factor starts a new scene.
    ``max_gain``: bound on the correction, so a sudden legitimate change is followed within a few frames.
    """

    alpha: float = 0.2
    cut_ratio: float = 1.5
    max_gain: float = 1.25
    _avg: float | None = field(default=None, repr=False)
    _last_input: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0 or self.cut_ratio <= 1.0 or self.max_gain < 1.0:
            raise ValueError("alpha must be in (0, 1], cut_ratio > 1 and max_gain >= 1")

    def reset(self) -> None:
        self._avg = self._last_input = None

    def is_cut(self, x_mean: float) -> bool:
        if self._last_input is None:
            return True
        return abs(math.log((x_mean + EPS) / (self._last_input + EPS))) > math.log(self.cut_ratio)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``x``: the frame as the model got it; ``y``: the model's output for it (float, [0, 1])."""
        x_mean, y_mean = mean_brightness(x), mean_brightness(y)
        cut = self.is_cut(x_mean)
        self._last_input = x_mean
        if cut or self._avg is None:
            self._avg = y_mean
            return y
        self._avg = (1.0 - self.alpha) * self._avg + self.alpha * y_mean
        gain = float(np.clip((self._avg + EPS) / (y_mean + EPS), 1.0 / self.max_gain, self.max_gain))
        return (y * np.float32(gain)).astype(y.dtype, copy=False)


def smoothed(run_tensor: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 RGB -> uint8 RGB through ``run_tensor`` (float NCHW -> float NCHW, e.g. an Enhancer's or a
    Chain's) with a fresh :class:`BrightnessSmoother`: one per video or camera stream, in frame order."""
    from deepfusionnet.runtime.processing import to_image, to_tensor

    smoother = BrightnessSmoother()

    def run(rgb: np.ndarray) -> np.ndarray:
        x = to_tensor(rgb)
        return to_image(smoother(x, run_tensor(x)))

    return run
