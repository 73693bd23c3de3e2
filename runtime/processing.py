"""Pre- and post-processing shared by every backend, by training's evaluation and by export checks.

Images are uint8 ``(H, W, 3)`` RGB; network tensors are float32 ``(1, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from deepfusionnet.errors import DFNError


def to_tensor(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> float32 ``(1, 3, H, W)`` in [0, 1]."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1 / 255)


def to_image(x: np.ndarray) -> np.ndarray:
    """float ``(1, 3, H, W)`` (or ``(3, H, W)``) in [0, 1] -> uint8 ``(H, W, 3)``, rounded."""
    if x.ndim == 4:
        x = x[0]
    x = np.nan_to_num(x.astype(np.float32, copy=False), nan=0.0)
    return np.ascontiguousarray((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))


def require_finite(y: np.ndarray, where, backend: str) -> None:
    """Fail the frame when a model's output holds NaN or Inf: clipped to [0, 1] they would be written as a
    black (or white) picture with exit 0. Called on every backend's output before anything else uses it."""
    if not np.isfinite(y).all():
        bad = int(y.size - np.count_nonzero(np.isfinite(y)))
        raise DFNError(f"{where}: the model's output holds NaN or Inf ({bad:,} of {y.size:,} values, on "
                       f"{backend}): broken weights, or a precision that overflows on this input")


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad NCHW ``x`` at the bottom/right to multiples of ``multiple`` (mirror padding).

    Returns the padded array and the original ``(H, W)`` for :func:`crop`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    # 'symmetric' works for any size, 1x1 included (reflect needs at least 2 pixels).
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="symmetric"), (h, w)


def pad_to_size(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad NCHW ``x`` at the bottom/right to exactly ``size`` = (H, W), symmetric as in pad_to_multiple."""
    h, w = x.shape[-2:]
    return np.pad(x, ((0, 0), (0, 0), (0, size[0] - h), (0, size[1] - w)), mode="symmetric")


def resize_tensor(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize a float ``(1, 3, H, W)`` tensor to ``size`` = (H, W)."""
    import cv2

    h, w = size
    hwc = np.ascontiguousarray(x[0].transpose(1, 2, 0))
    out = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])


def crop(y: np.ndarray, size: tuple[int, int], scale: int = 1) -> np.ndarray:
    """Undo :func:`pad_to_multiple` on an output that is ``scale`` times the input."""
    h, w = size
    return y[..., : h * scale, : w * scale]


@dataclass(frozen=True)
class Tile:
    y0: int
    x0: int
    y1: int
    x1: int


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile`` x ``tile`` covering ``(h, w)``, neighbours sharing ``overlap`` pixels."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        step = tile - overlap
        s = list(range(0, n - tile, step)) + [n - tile]
        return sorted(set(s))

    return [Tile(y, x, min(y + tile, h), min(x + tile, w)) for y in starts(h) for x in starts(w)]


def _ramp(n: int, lo_edge: bool, hi_edge: bool, overlap: int) -> np.ndarray:
    """1-D feather weight: linear ramps of length ``overlap`` on interior sides, 1 elsewhere."""
    wgt = np.ones(n, np.float32)
    r = min(overlap, n // 2)
    if r > 0:
        ramp = (np.arange(r, dtype=np.float32) + 1) / (r + 1)
        if not lo_edge:
            wgt[:r] = ramp
        if not hi_edge:
            wgt[n - r:] = ramp[::-1]
    return wgt


def run_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    tile: int,
    overlap: int = 32,
    scale: int = 1,
    multiple: int = 8,
) -> np.ndarray:
    """Run ``fn`` (NCHW -> NCHW, ``scale`` x larger) over overlapping tiles and feather-blend them.

    Memory stays bounded by one tile plus the output, whatever the frame size. Each tile is padded
    to ``multiple`` independently, so ``fn`` may be a fixed-multiple network.
    """
    n, c, h, w = x.shape
    if h <= tile and w <= tile:
        xp, size = pad_to_multiple(x, multiple)
        return crop(fn(xp), size, scale)
    out = np.zeros((n, 3, h * scale, w * scale), np.float32)
    norm = np.zeros((1, 1, h * scale, w * scale), np.float32)
    for t in tile_grid(h, w, tile, overlap):
        xp, size = pad_to_multiple(x[:, :, t.y0:t.y1, t.x0:t.x1], multiple)
        y = crop(fn(xp), size, scale).astype(np.float32, copy=False)
        wy = _ramp(y.shape[2], t.y0 == 0, t.y1 == h, overlap * scale)
        wx = _ramp(y.shape[3], t.x0 == 0, t.x1 == w, overlap * scale)
        wgt = wy[:, None] * wx[None, :]
        ys, xs = slice(t.y0 * scale, t.y1 * scale), slice(t.x0 * scale, t.x1 * scale)
        out[:, :, ys, xs] += y * wgt
        norm[:, :, ys, xs] += wgt
    return out / norm
