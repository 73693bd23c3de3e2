"""Synthetic low-light pairs from normal-light images: a small "dark ISP" (MAET / Brooks et al.).

sRGB -> inverse gamma (linear) -> exposure scale -> Poisson-Gaussian shot/read noise in linear
space -> forward gamma -> quantisation. Parameter ranges from ``quality-notes.md`` section 5,
chosen so the mean brightness matches LOL-v1 low images.
"""

from __future__ import annotations

import numpy as np


def darken(
    rgb: np.ndarray,
    rng: np.random.Generator,
    gamma: tuple[float, float] = (2.0, 3.5),
    exposure: tuple[float, float] = (0.01, 0.4),
    quant_steps: tuple[int, ...] = (4, 6, 8),
) -> np.ndarray:
    """A plausible low-light version of uint8 RGB ``rgb`` (same shape, uint8)."""
    g = rng.uniform(*gamma)
    k = rng.uniform(*exposure)
    lin = (rgb.astype(np.float32) / 255.0) ** g * k
    log_shot = rng.uniform(np.log(1e-4), np.log(0.012))
    log_read = 2.18 * log_shot + 1.20 + rng.normal(0, 0.26)
    var = lin * np.exp(log_shot) + np.exp(log_read)
    lin = np.clip(lin + rng.normal(size=lin.shape).astype(np.float32) * np.sqrt(var).astype(np.float32), 0, 1)
    out = lin ** (1.0 / g)
    step = int(rng.choice(quant_steps)) / 255.0
    out = np.round(out / step) * step
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthesize_pairs(images: list[np.ndarray], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic ``(low, normal)`` pairs for users without paired data."""
    rng = np.random.default_rng(seed)
    return [(darken(img, rng), img) for img in images]
