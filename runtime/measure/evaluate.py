"""Scoring an enhancer (network on any backend, or a classical baseline) on paired data.

Protocol ``lol`` (the default, the standard LOL-v1 one): full resolution, RGB, PSNR with data range
1 on the uint8 output, SSIM with an 11x11 Gaussian window (sigma 1.5) per channel, averaged over
images, no GT-mean correction. The GT-mean oracle (output rescaled so its gray mean equals the
ground truth's, as LLFlow/Retinexformer report) is given only as a separate, labelled number.
Protocol ``paper``: both images resized to 256x256 first (the DeepFusionNet paper's setting).

For a 2x SR model the data's normal-light images are the targets: each is blurred with a random odd
Gaussian kernel in {3, 5, 7, 9} and downscaled x2 (:func:`degrade_for_sr`, seeded per image name so
a subset scores the same images the same way) and the output is compared with the sharp image.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import cv2
import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import default_task
from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.metrics import gt_mean_correct, psnr, ssim

PROTOCOLS = ("lol", "paper")
PAPER_SIZE = 256
SR_KERNELS = (3, 5, 7, 9)


class ImageModel(Protocol):
    """What is scored: uint8 RGB in, uint8 RGB ``scale`` x larger out."""

    scale: int

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...


def degrade_for_sr(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's SR degradation: Gaussian blur with a random odd kernel in {3,5,7,9}, then x2 down
    (INTER_AREA). Shared with training (``train/data.py``)."""
    k = int(rng.choice(SR_KERNELS))
    blurred = cv2.GaussianBlur(hr, (k, k), 0)
    return cv2.resize(blurred, (hr.shape[1] // 2, hr.shape[0] // 2), interpolation=cv2.INTER_AREA)


def sr_rng(name: str, seed: int = 0) -> np.random.Generator:
    """The fixed per-image generator used to degrade evaluation targets."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    gt_mean_psnr: float | None = None
    gt_mean_ssim: float | None = None
    seconds: float = 0.0  # model time only (informative; benchmarks measure speed properly)


@dataclass
class EvalResult:
    protocol: str
    scale: int
    task: str = ""  # runtime.artifacts.TASKS; "" = by scale
    per_image: list[ImageScore] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    @property
    def images(self) -> int:
        return len(self.per_image)

    def mean(self, key: str) -> float | None:
        vals = [getattr(s, key) for s in self.per_image]
        if not vals or any(v is None for v in vals):
            return None
        return float(np.mean(vals))

    def to_json(self) -> dict:
        gt_mean = None
        task = self.task or default_task(self.scale)
        if task != "sr" and self.per_image:
            gt_mean = {"psnr": self.mean("gt_mean_psnr"), "ssim": self.mean("gt_mean_ssim"),
                       "note": "oracle: output scaled to the ground truth's gray mean; "
                               "not comparable with psnr/ssim"}
        return {
            "psnr": self.mean("psnr"),
            "ssim": self.mean("ssim"),
            "images": self.images,
            "protocol": self.protocol,
            "task": task if self.scale == 1 else f"{task}-x{self.scale}",
            "gt_mean": gt_mean,
            "seconds_per_image": self.mean("seconds"),
            "per_image": [asdict(s) for s in self.per_image],
            "failed": self.failed,
        }


def halve_low(low: np.ndarray) -> np.ndarray:
    """An enhance-sr model's input: the low-light frame bicubic-downscaled x2 (no antialiasing, like
    TensorFlow's default resize, as NEID's evaluation), from its even-sided crop."""
    h, w = low.shape[0] // 2, low.shape[1] // 2
    return cv2.resize(low[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_CUBIC)


def prepare_pair(low: np.ndarray, high: np.ndarray, name: str, scale: int, protocol: str,
                 seed: int = 0, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``(model input, target)`` for one pair under ``protocol``. ``task`` (default: by ``scale``):
    enhance: the low frame; sr: the target degraded; enhance-sr: the low frame halved (:func:`halve_low`)."""
    if protocol not in PROTOCOLS:
        raise DFNError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    task = task or default_task(scale)
    if task == "sr":
        if scale != 2:
            raise DFNError(f"{name}: only x2 SR models can be evaluated (scale {scale})")
        if protocol == "paper":  # the paper's 256 -> 512 SR pairs
            high = cv2.resize(high, (2 * PAPER_SIZE, 2 * PAPER_SIZE), interpolation=cv2.INTER_AREA)
        high = high[: high.shape[0] // 2 * 2, : high.shape[1] // 2 * 2]  # even, so x2 of the input matches
        return degrade_for_sr(high, sr_rng(name, seed)), high
    # A low-light input: enhance keeps its size, enhance-sr halves it.
    if low.shape != high.shape:
        raise DFNError(f"{name}: low image {low.shape[1]}x{low.shape[0]} and ground truth "
                       f"{high.shape[1]}x{high.shape[0]} differ in size")
    if protocol == "paper":
        side = PAPER_SIZE * scale
        low, high = (cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in (low, high))
    if task == "enhance":
        return low, high
    return halve_low(low), high[: high.shape[0] // 2 * 2, : high.shape[1] // 2 * 2]


def score(out: np.ndarray, target: np.ndarray, name: str, gt_mean: bool = True) -> ImageScore:
    """PSNR/SSIM of a uint8 output against its uint8 target (and the GT-mean variant)."""
    if out.shape != target.shape:
        raise DFNError(f"{name}: output {out.shape[1]}x{out.shape[0]} does not match the target "
                       f"{target.shape[1]}x{target.shape[0]}")
    s = ImageScore(name, psnr(out, target), ssim(out, target))
    if gt_mean:
        corrected = (gt_mean_correct(out, target) * 255.0 + 0.5).astype(np.uint8)
        s.gt_mean_psnr, s.gt_mean_ssim = psnr(corrected, target), ssim(corrected, target)
    return s


def evaluate(
    model: ImageModel,
    pairs: Iterable[tuple[Path, Path]],
    protocol: str = "lol",
    seed: int = 0,
    on_image: Callable[[ImageScore, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> EvalResult:
    """Score ``model`` on ``(low, high)`` path pairs.

    A pair that cannot be read, or whose sizes disagree, is recorded in ``failed`` and skipped;
    ``on_image(score, input, output, target)`` is called after each scored pair (e.g. for a sheet).
    """
    scale = int(getattr(model, "scale", 1))
    task = getattr(model, "task", None) or default_task(scale)
    result = EvalResult(protocol, scale, task)
    for lp, hp in pairs:
        name = Path(lp).name
        try:
            low, high = read_image(lp), read_image(hp)
            x, target = prepare_pair(low, high, name, scale, protocol, seed, task)
        except DFNError as exc:
            result.failed.append({"name": name, "error": str(exc)})
            continue
        t0 = time.perf_counter()
        out = model(x)
        dt = time.perf_counter() - t0
        s = score(out, target, name, gt_mean=task != "sr")
        s.seconds = dt
        result.per_image.append(s)
        if on_image is not None:
            on_image(s, x, out, target)
    return result
