"""``dfn eval --robustness``: how an enhancer treats frames it should leave alone, and video.

- **Well-exposed frames**: each pair's normal-light image is fed as the input; the output should stay
  close to it. PSNR of output vs input, the share of pixels the enhancer newly clips to white (any
  channel >= 254 where the input's brightest channel was < 250), and the share of saturated, lit pixels
  (HSV saturation and value >= 0.25) whose hue moves by more than 20 degrees.
- **Tiling**: a low-light image resized to 640x480 and 1920x1080, enhanced whole and in 2 x 2 tiles
  (the runtime's overlapping, feathered tiles); PSNR of the tiled output against the whole one. A network
  whose attention pools over its input sees only its tile's statistics, so this shows where seams come
  from.
- **Flicker** (:mod:`deepfusionnet.runtime.measure.flicker`): static and slowly panning clips made from the
  data's low-light images with synthetic sensor noise, enhanced frame by frame, with and without the
  brightness smoother that ``dfn enhance`` uses on videos and cameras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.measure.flicker import score_clip, synthetic_clip
from deepfusionnet.runtime.metrics import psnr
from deepfusionnet.runtime.processing import to_image, to_tensor
from deepfusionnet.runtime.temporal import smoothed

HUE_SHIFT_DEGREES = 20.0


def clipped_fraction(inp: np.ndarray, out: np.ndarray) -> float:
    """Share of pixels newly clipped to white by the enhancer (uint8 RGB images of one size)."""
    return float(((out.max(axis=-1) >= 254) & (inp.max(axis=-1) < 250)).mean())


def hue_shifted_fraction(inp: np.ndarray, out: np.ndarray) -> float:
    """Share of all pixels that are saturated and lit in the input and change hue by > 20 degrees."""
    hi = cv2.cvtColor(inp, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    ho = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    coloured = (hi[..., 1] >= 64) & (hi[..., 2] >= 64)
    d = np.abs(hi[..., 0] - ho[..., 0])
    d = np.minimum(d, 256 - d) * (360.0 / 256.0)
    return float((coloured & (d > HUE_SHIFT_DEGREES)).mean())


def well_exposed(model: Callable[[np.ndarray], np.ndarray], images: list[Path]) -> dict:
    """Feed already well-exposed images; how far does the output move from them?"""
    ps, clipped, hue = [], [], []
    for path in images:
        x = read_image(path)
        y = model(x)
        if y.shape != x.shape:  # an upscaler: compare at the input's size
            y = cv2.resize(y, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_AREA)
        ps.append(psnr(y, x))
        clipped.append(clipped_fraction(x, y))
        hue.append(hue_shifted_fraction(x, y))
    finite = [p for p in ps if np.isfinite(p)]
    return {"images": len(ps), "psnr_vs_input_min": float(min(ps)),
            "psnr_vs_input_median": float(np.median(ps)),
            "unchanged": len(ps) - len(finite), "clipped_fraction": float(np.mean(clipped)),
            "hue_shifted_fraction": float(np.mean(hue))}


TILING_SIZES = ((640, 480), (1920, 1080))


def two_by_two_tile(w: int, h: int, overlap: int = 32, multiple: int = 8) -> int:
    """The tile side, a multiple of ``multiple``, that cuts a w x h frame into 2 x 2 tiles overlapping by at
    least ``overlap`` px (the runtime rounds tiles down to the multiple, so round up here)."""
    return -(-((max(w, h) + overlap + 1) // 2) // multiple) * multiple


def tiling_agreement(enhancer, photo: Path, overlap: int = 32) -> dict:
    """PSNR of 2 x 2 tiles against the whole frame at each of :data:`TILING_SIZES` (an Enhancer: its
    ``tile`` is replaced; the exposure gate is off, to compare the networks' outputs)."""
    from dataclasses import replace

    img = read_image(photo)
    out = {}
    for w, h in TILING_SIZES:
        frame = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        whole = replace(enhancer, tile=1 << 30, gate=None)(frame)
        tile = two_by_two_tile(w, h, overlap, enhancer.artifact.multiple)
        tiled = replace(enhancer, tile=tile, overlap=overlap, gate=None)(frame)
        out[f"{w}x{h}"] = float(psnr(tiled, whole))
    return out


def flicker(run_tensor: Callable[[np.ndarray], np.ndarray], photos: list[Path], frames: int = 12) -> dict:
    """Brightness flicker and temporal noise on static and panning clips of ``photos``, without and with
    the brightness smoother. ``run_tensor``: float NCHW [0, 1] -> float NCHW (the enhancer's)."""
    rows = []
    for i, path in enumerate(photos):
        photo = read_image(path)
        for motion in ("static", "pan"):
            clip = synthetic_clip(photo, frames=frames, motion=motion, seed=i)
            clean = None
            if motion == "static":
                (frame,) = synthetic_clip(photo, frames=1, motion=motion, photons=None)
                clean = to_image(run_tensor(to_tensor(frame)))
            for smooth in (False, True):
                enhance = smoothed(run_tensor) if smooth else lambda img: to_image(run_tensor(to_tensor(img)))
                s = score_clip(clip, enhance, static=motion == "static", clean_output=clean)
                rows.append({"photo": Path(path).name, "motion": motion, "smoothing": smooth, **s.to_json()})

    def mean(key: str, motion: str, smooth: bool) -> float | None:
        vals = [r[key] for r in rows
                if r["motion"] == motion and r["smoothing"] == smooth and r[key] is not None]
        return float(np.mean(vals)) if vals else None

    summary = {f"{m}{'_smoothed' if s else ''}": {
        "brightness_flicker_in": mean("brightness_flicker_in", m, s),
        "brightness_flicker_out": mean("brightness_flicker_out", m, s),
        "temporal_noise_in": mean("temporal_noise_in", m, s),
        "temporal_noise_out": mean("temporal_noise_out", m, s),
        "psnr_vs_clean": mean("psnr_vs_clean", m, s)} for m in ("static", "pan") for s in (False, True)}
    return {"clips": rows, "summary": summary}
