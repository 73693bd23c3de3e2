"""Fit the runtime's exposure calibration (:mod:`deepfusionnet.runtime.exposure`) on training frames.

Each whole training frame gives the network's log mean output brightness ``l`` and the log ratio
``r`` of the ground truth's mean to it; ``r ~ offset + slope * (l - centre)`` by least squares. The
frames run through the runtime's own Enhancer (padding and tiling as in use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.exposure import EPS, Exposure, log_brightness
from deepfusionnet.runtime.metrics import psnr, ssim
from deepfusionnet.runtime.processing import to_image, to_tensor


def fit_from_samples(levels: np.ndarray, ratios: np.ndarray) -> Exposure:
    """Least-squares ``ratios ~ offset + slope * (levels - centre)``, ``centre = mean(levels)``."""
    levels, ratios = np.asarray(levels, np.float64), np.asarray(ratios, np.float64)
    if len(levels) < 8:
        raise DFNError(f"exposure calibration needs at least 8 training frames, got {len(levels)}")
    centre = float(levels.mean())
    x = levels - centre
    slope = float((x * (ratios - ratios.mean())).sum() / max((x * x).sum(), 1e-12))
    return Exposure(slope=slope, centre=centre, offset=float(ratios.mean()))


def fit_exposure(run_network: Callable[[np.ndarray], np.ndarray],
                 pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                 progress: Callable[[int], None] = lambda i: None) -> Exposure:
    """Fit on uint8 ``(low, high)`` pairs; ``run_network``: float NCHW -> the network's raw NCHW output."""
    levels, ratios = [], []
    for i, (lo, hi) in enumerate(pairs):
        level = float(log_brightness(run_network(to_tensor(lo)))[0, 0, 0, 0])
        levels.append(level)
        ratios.append(np.log(hi.mean(dtype=np.float64) / 255.0 + EPS) - level)
        progress(i + 1)
    return fit_from_samples(np.array(levels), np.array(ratios))


def score(run_network: Callable[[np.ndarray], np.ndarray], pairs: Iterable[tuple[np.ndarray, np.ndarray]],
          exposure: Exposure) -> dict:
    """Mean PSNR/SSIM of the network's outputs without and with ``exposure``, on the same frames."""
    rows = []
    for lo, hi in pairs:
        y = run_network(to_tensor(lo))
        a, b = to_image(y), to_image(exposure.apply(y))
        rows.append((psnr(a, hi), ssim(a, hi), psnr(b, hi), ssim(b, hi)))
    if not rows:
        return {}
    m = np.mean(np.array(rows), axis=0)
    return {"images": len(rows), "psnr": float(m[0]), "ssim": float(m[1]),
            "psnr_calibrated": float(m[2]), "ssim_calibrated": float(m[3])}
