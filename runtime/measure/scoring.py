"""Quality of a benchmark row: mean PSNR/SSIM over a paired set, and its difference to FP32."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.measure.evaluate import prepare_pair
from deepfusionnet.runtime.measure.rows import Row
from deepfusionnet.runtime.measure.runner import Runner
from deepfusionnet.runtime.metrics import psnr, ssim


def quality(runner: Runner, pairs: list[tuple[Path, Path]]) -> dict:
    """Mean PSNR/SSIM of ``runner`` over ``(low, high)`` pairs.

    An SR-only spec is scored like ``dfn eval`` scores SR (degraded ground truth in, sharp ground
    truth out); any other spec takes the low-light image, and an output larger than the ground
    truth (enhancer + SR chain) is downscaled to it (INTER_AREA) before scoring.
    """
    sr_only = runner.chain.sr is None and runner.chain.scale == 2
    ps, ss = [], []
    for low_p, high_p in pairs:
        low, high = read_image(low_p), read_image(high_p)
        if sr_only:
            # Named as dfn eval names it: the name seeds the degradation, so both score the same inputs.
            low, high = prepare_pair(low, high, low_p.name, 2, "lol")
        out = runner.run(low)
        if out.shape != high.shape:
            out = cv2.resize(out, (high.shape[1], high.shape[0]), interpolation=cv2.INTER_AREA)
        ps.append(psnr(out, high))
        ss.append(ssim(out, high))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "images": len(ps)}


def quality_deltas(rows: list[Row]) -> None:
    """``psnr_delta_db``: each scored row against FP32 of its model (PyTorch eager, else ONNX Runtime)."""
    for r in rows:
        if r.psnr_eval15 is None:
            continue
        refs = [x for x in rows if x.model == r.model and x.precision == "fp32" and x.psnr_eval15 is not None]
        ref = next((x for x in refs if x.backend == "torch"), None) or next(
            (x for x in refs if x.backend == "onnxruntime"), None)
        if ref is not None:
            r.psnr_delta_db = r.psnr_eval15 - ref.psnr_eval15
