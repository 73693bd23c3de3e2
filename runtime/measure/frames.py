"""The frame every measurement runs on: a real night sample resized to the requested size."""

from __future__ import annotations

import cv2
import numpy as np

from deepfusionnet.runtime.samples import sample_frame


def synthetic_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A dark, textured RGB frame of ``(width, height)``: a real night sample resized when one ships, else noise."""
    w, h = size
    sample = sample_frame()
    if sample.is_file():
        img = cv2.imread(str(sample), cv2.IMREAD_COLOR)
        if img is not None:
            return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1])
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
