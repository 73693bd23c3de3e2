"""Classical, training-free enhancers (numpy/OpenCV), scored exactly like the network.

They show what the network buys: ``dfn eval baseline:lime --data DIR``. Every parameter is fixed in
advance; nothing is chosen per image from the ground truth (that would be the GT-mean oracle).

- ``none``: the input unchanged (the floor every method is measured against).
- ``gamma``: a fixed 1-stop gain (x2), then display gamma 1/2.2.
- ``clahe``: CLAHE (clip 2.0, 8x8 tiles) on L of Lab; colour untouched.
- ``he``: global histogram equalisation of Y in YCrCb.
- ``msrcr``: multi-scale Retinex with colour restoration (Jobson, Rahman & Woodell 1997), scales
  15/80/250, alpha 125, beta 46, then a 1 %/99 % simplest colour balance.
- ``lime``: LIME (Guo, Li & Ling, TIP 2017): illumination = max(R, G, B), refined by the paper's
  sped-up weighted least squares (alpha 0.15), gamma 0.8, image / illumination; no BM3D denoising.
- ``bicubic``, ``lanczos``: plain 2x upsampling, the floor for the SR model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from deepfusionnet.errors import DFNError


def _f(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) * np.float32(1 / 255)


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gamma(rgb: np.ndarray, gain: float = 2.0, g: float = 1 / 2.2) -> np.ndarray:
    """``clip(gain * x) ** g`` with fixed ``gain`` and ``g``."""
    return _u8(np.clip(_f(rgb) * gain, 0.0, 1.0) ** g)


def clahe(rgb: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of Lab."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
    lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def he(rgb: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of luma (Y of YCrCb), chroma untouched."""
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = cv2.equalizeHist(np.ascontiguousarray(ycc[..., 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def _simplest_balance(x: np.ndarray, low: float = 0.01, high: float = 0.99) -> np.ndarray:
    """Stretch each channel so its ``low``/``high`` quantiles map to 0/1."""
    out = np.empty_like(x)
    for c in range(x.shape[2]):
        lo, hi = np.quantile(x[..., c], [low, high])
        out[..., c] = (x[..., c] - lo) / max(hi - lo, 1e-6)
    return np.clip(out, 0.0, 1.0)


def msrcr(rgb: np.ndarray, sigmas: tuple[float, ...] = (15.0, 80.0, 250.0), alpha: float = 125.0,
          beta: float = 46.0) -> np.ndarray:
    """Multi-scale Retinex with colour restoration, then simplest colour balance."""
    x = rgb.astype(np.float32) + 1.0  # log(0) guard, on the 1..256 scale the method is defined on
    log_x = np.log(x)
    msr = np.zeros_like(x)
    for s in sigmas:
        msr += log_x - np.log(cv2.GaussianBlur(x, (0, 0), s, borderType=cv2.BORDER_REFLECT) + 1e-6)
    msr /= len(sigmas)
    crf = beta * (np.log(alpha * x) - np.log(x.sum(axis=2, keepdims=True)))
    return _u8(_simplest_balance(msr * crf))


def _cg_wls(t_hat: np.ndarray, wx: np.ndarray, wy: np.ndarray, iters: int = 300,
            tol: float = 1e-4) -> np.ndarray:
    """Solve ``(I + Dx' Wx Dx + Dy' Wy Dy) t = t_hat`` by Jacobi-preconditioned conjugate gradients.

    ``Dx``/``Dy`` are forward differences (zero across the border); ``wx``/``wy`` hold the weights of
    the differences between a pixel and its right/lower neighbour (last column/row unused).
    """
    wx = wx.copy()
    wy = wy.copy()
    wx[:, -1] = 0
    wy[-1, :] = 0

    def apply(t: np.ndarray) -> np.ndarray:
        gx = np.zeros_like(t)
        gy = np.zeros_like(t)
        gx[:, :-1] = (t[:, 1:] - t[:, :-1]) * wx[:, :-1]
        gy[:-1, :] = (t[1:, :] - t[:-1, :]) * wy[:-1, :]
        div = np.zeros_like(t)  # Dx' gx + Dy' gy
        div[:, :-1] -= gx[:, :-1]
        div[:, 1:] += gx[:, :-1]
        div[:-1, :] -= gy[:-1, :]
        div[1:, :] += gy[:-1, :]
        return t + div

    diag = 1.0 + wx + wy
    diag[:, 1:] += wx[:, :-1]
    diag[1:, :] += wy[:-1, :]
    t = t_hat.copy()
    r = t_hat - apply(t)
    z = r / diag
    p = z.copy()
    rz = float((r * z).sum())
    norm0 = float(np.sqrt((t_hat * t_hat).sum())) or 1.0
    for _ in range(iters):
        ap = apply(p)
        a = rz / float((p * ap).sum())
        t += a * p
        r -= a * ap
        if float(np.sqrt((r * r).sum())) < tol * norm0:
            break
        z = r / diag
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return t


def lime(rgb: np.ndarray, alpha: float = 0.15, g: float = 0.8, eps: float = 1e-3) -> np.ndarray:
    """LIME: refined max-RGB illumination map, gamma-corrected, divided out."""
    x = rgb.astype(np.float64) / 255.0
    t_hat = x.max(axis=2)
    gx = np.zeros_like(t_hat)
    gy = np.zeros_like(t_hat)
    gx[:, :-1] = np.abs(t_hat[:, 1:] - t_hat[:, :-1])
    gy[:-1, :] = np.abs(t_hat[1:, :] - t_hat[:-1, :])
    # Sped-up solver, strategy II: weights 1 / (|grad T_hat| + eps), approximating the l1 TV term.
    t = _cg_wls(t_hat, alpha / (gx + eps), alpha / (gy + eps))
    t = np.clip(t, eps, 1.0) ** g
    return _u8(x / t[..., None])


def bicubic(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (rgb.shape[1] * 2, rgb.shape[0] * 2), interpolation=cv2.INTER_CUBIC)


def lanczos(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (rgb.shape[1] * 2, rgb.shape[0] * 2), interpolation=cv2.INTER_LANCZOS4)


# name -> (function, scale, one-line description)
BASELINES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int, str]] = {
    "none": (lambda rgb: rgb, 1, "the input itself, no enhancement"),
    "gamma": (gamma, 1, "fixed gain x2 then gamma 1/2.2"),
    "clahe": (clahe, 1, "CLAHE (clip 2, 8x8) on L of Lab"),
    "he": (he, 1, "global histogram equalisation of Y"),
    "msrcr": (msrcr, 1, "multi-scale Retinex with colour restoration"),
    "lime": (lime, 1, "LIME illumination map (sped-up solver, no denoising)"),
    "bicubic": (bicubic, 2, "bicubic 2x upsampling (SR floor)"),
    "lanczos": (lanczos, 2, "Lanczos 2x upsampling (SR floor)"),
}
PREFIX = "baseline:"


@dataclass
class Baseline:
    """A baseline in the shape of an :class:`~deepfusionnet.runtime.enhancer.Enhancer`: call it on
    uint8 RGB, read ``scale``, ``close()`` it."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    scale: int = 1
    description: str = ""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.fn(rgb)

    def close(self) -> None:
        pass


def is_baseline(model: str) -> bool:
    return str(model).startswith(PREFIX)


def get_baseline(model: str) -> Baseline:
    """``"baseline:clahe"`` (or ``"clahe"``) -> :class:`Baseline`."""
    name = str(model).removeprefix(PREFIX)
    if name not in BASELINES:
        raise DFNError(f"unknown baseline {name!r}; choose one of: "
                       + ", ".join(PREFIX + n for n in BASELINES))
    fn, scale, desc = BASELINES[name]
    return Baseline(PREFIX + name, fn, scale, desc)
