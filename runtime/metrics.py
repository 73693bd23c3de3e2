"""PSNR and SSIM the standard LOL way, in numpy/OpenCV so an engine can be scored on the device.

SSIM follows Wang et al. as ported by the low-light codebases (Retinexformer, HVI-CIDNet, PairLIE):
11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, per RGB channel, averaged; equal to
``skimage.metrics.structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)`` up to border handling (checked in the tests).
"""

from __future__ import annotations

import cv2
import numpy as np


def _as_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    return img.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of two images of the same shape (uint8 is scaled to [0, 1])."""
    a, b = _as_float(a), _as_float(b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over channels of ``(H, W, C)`` (or ``(H, W)``) images; uint8 is scaled to [0, 1]."""
    a, b = _as_float(a), _as_float(b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        # skimage's gaussian_filter with truncate=3.5 -> 11x11 at sigma 1.5, mode 'reflect'.
        blur = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        pad = 5  # skimage crops (win_size - 1) // 2 before averaging
        vals.append(float(s[pad:-pad, pad:-pad].mean()) if min(x.shape) > 2 * pad else float(s.mean()))
    return float(np.mean(vals))


def gt_mean_correct(out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The GT-mean oracle used by LLFlow/Retinexformer: scale ``out`` so its gray mean matches GT.

    Reported only as a separately labelled number, never as the headline metric.
    """
    o, g = _as_float(out), _as_float(gt)
    gray = lambda z: z @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    return np.clip(o * (gray(g).mean() / max(gray(o).mean(), 1e-8)), 0, 1)
