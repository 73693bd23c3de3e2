"""A before / after / ground-truth contact sheet: one downscaled row per image, labelled."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deepfusionnet.runtime.images import write_image

HEADER = 28
LABEL = 22


def _thumb(img: np.ndarray, width: int, height: int) -> np.ndarray:
    interp = cv2.INTER_AREA if img.shape[1] >= width else cv2.INTER_NEAREST  # SR inputs shown blocky
    return cv2.resize(img, (width, height), interpolation=interp)


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.5) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


class ContactSheet:
    """Collects small thumbnails while evaluating (memory stays small), then writes one PNG."""

    def __init__(self, width: int = 240, title: str = "", labels: tuple[str, str, str] | None = None) -> None:
        self.width = width
        self.title = title
        self.labels = labels or ("input", title or "output", "ground truth")  # the three columns
        self.rows: list[np.ndarray] = []

    def add(self, name: str, before: np.ndarray, after: np.ndarray, truth: np.ndarray,
            caption: str = "") -> None:
        h = max(1, round(self.width * truth.shape[0] / truth.shape[1]))
        row = np.concatenate([_thumb(im, self.width, h) for im in (before, after, truth)], axis=1)
        _text(row, name, 4, 16)
        if caption:
            _text(row, caption, self.width + 4, 16)
        self.rows.append(row)

    def image(self) -> np.ndarray:
        if not self.rows:
            raise ValueError("empty contact sheet")
        width = 3 * self.width
        header = np.full((HEADER, width, 3), 32, np.uint8)
        for i, label in enumerate(self.labels):
            _text(header, label, i * self.width + 4, 19)
        return np.concatenate([header, *self.rows], axis=0)

    def write(self, path: str | Path) -> None:
        """Write the sheet atomically (format from the suffix, PNG recommended)."""
        write_image(path, self.image())
