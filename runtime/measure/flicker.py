"""Flicker of an enhancer on video: synthetic night clips and frame-to-frame measures.

A clip is one real photo seen by a noisy sensor: every frame draws fresh shot noise (Poisson, ``photons``
at white) and read noise (Gaussian), optionally with a slow sub-pixel pan. The measures compare the
output's frame-to-frame change with the input's:

- ``brightness_flicker``: mean |change of the frame's mean brightness| between consecutive frames,
  relative to the clip's mean brightness (a global pumping measure; a pan changes it a little too);
- ``temporal_noise``: on static clips, the per-pixel standard deviation over time, relative to the mean
  (what noise the enhancer lets through, amplified or not).
Both are reported for the input and the output; the ratio out/in says whether the enhancer adds flicker
beyond what the brightening itself scales (both are relative to the clip's own mean).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import cv2
import numpy as np

MOTIONS = ("static", "pan")


def synthetic_clip(photo: np.ndarray, frames: int = 16, motion: str = "static", photons: float | None = 60.0,
                   read_noise: float = 2.0 / 255, size: tuple[int, int] = (320, 240), seed: int = 0,
                   pan_px: float = 0.5) -> list[np.ndarray]:
    """``frames`` uint8 RGB frames of ``photo`` (uint8 RGB) at ``size`` (W, H) with fresh sensor noise each;
    ``pan``: the view moves ``pan_px`` pixels right per frame (sub-pixel, bilinear); ``photons`` None: no noise
    (the clean frames, a reference for what the enhancer should output)."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {', '.join(MOTIONS)}")
    rng = np.random.default_rng(seed)
    w, h = size
    margin = int(np.ceil(pan_px * frames)) + 2 if motion == "pan" else 0
    base = cv2.resize(photo, (w + margin, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    out = []
    for t in range(frames):
        if motion == "pan":
            m = np.float32([[1, 0, -pan_px * t], [0, 1, 0]])
            view = cv2.warpAffine(base, m, (w + margin, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            view = view[:, :w]
        else:
            view = base[:, :w]
        if photons is None:
            out.append((np.clip(view, 0, 1) * 255 + 0.5).astype(np.uint8))
            continue
        noisy = rng.poisson(np.clip(view, 0, 1) * photons) / photons + rng.normal(0, read_noise, view.shape)
        out.append((np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8))
    return out


@dataclass
class FlickerScore:
    brightness_flicker_in: float
    brightness_flicker_out: float
    temporal_noise_in: float | None
    temporal_noise_out: float | None
    psnr_vs_clean: float | None = None  # mean PSNR of the outputs against the enhanced clean frame

    @property
    def brightness_ratio(self) -> float:
        return self.brightness_flicker_out / max(self.brightness_flicker_in, 1e-12)

    def to_json(self) -> dict:
        return {**asdict(self), "brightness_ratio": self.brightness_ratio}


def brightness_flicker(frames: list[np.ndarray]) -> float:
    """Mean |m_t - m_{t-1}| / mean(m) over a clip (uint8 or float frames)."""
    m = np.array([np.asarray(f, np.float64).mean() for f in frames])
    return float(np.abs(np.diff(m)).mean() / max(m.mean(), 1e-12))


def temporal_noise(frames: list[np.ndarray]) -> float:
    """Mean per-pixel standard deviation over time / mean value: a static clip's noise that moves."""
    stack = np.stack([np.asarray(f, np.float64) for f in frames])
    return float(stack.std(axis=0).mean() / max(stack.mean(), 1e-12))


def score_clip(clip: list[np.ndarray], enhance: Callable[[np.ndarray], np.ndarray], static: bool,
               clean_output: np.ndarray | None = None) -> FlickerScore:
    """Run ``enhance`` (uint8 RGB -> uint8 RGB, called in frame order) over ``clip`` and measure;
    ``clean_output``: the enhancer's output for the noise-free frame of a static clip (for PSNR)."""
    from deepfusionnet.runtime.metrics import psnr

    outs = [enhance(f) for f in clip]
    quality = float(np.mean([psnr(o, clean_output) for o in outs])) if clean_output is not None else None
    return FlickerScore(brightness_flicker(clip), brightness_flicker(outs),
                        temporal_noise(clip) if static else None, temporal_noise(outs) if static else None,
                        quality)
