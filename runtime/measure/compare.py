"""Parity between two models on real images: error statistics, PSNR/SSIM, tolerances per precision.

Torch-free, so ``dfn parity`` compares two ONNX graphs or engines on the device. Like Polygraphy's
comparator, a report gives each statistic, the tolerance it was held to, and the smallest tolerance
that would have passed; unlike an elementwise check alone it also speaks dB, because an INT8 graph
never passes ``atol`` and users judge images in PSNR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.metrics import psnr, ssim


@dataclass(frozen=True)
class Tolerance:
    """What a candidate of one precision must meet against the FP32 reference (``None``: not checked).

    ``max_abs``: largest absolute error over all pixels of all images. ``min_psnr``: PSNR (dB) of the
    candidate's output vs the reference's, on the worst image. ``max_gt_drop``: mean PSNR vs ground
    truth of the reference minus that of the candidate (dB), when the data has pairs.
    """

    max_abs: float | None = None
    min_psnr: float | None = None
    max_gt_drop: float | None = None


# The one table of tolerances, per precision of the candidate (the reference is FP32).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4),
    "fp16": Tolerance(min_psnr=45.0),
    "int8": Tolerance(min_psnr=32.0, max_gt_drop=0.5),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}") from None


def error_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """Elementwise error statistics of ``cand`` vs ``ref`` (same shape, float NCHW in [0, 1])."""
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    ref = ref.astype(np.float32, copy=False)
    cand = cand.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(cand)))
    ref_bad = int(np.count_nonzero(~np.isfinite(ref)))
    err = np.abs(np.nan_to_num(cand, nan=0.0, posinf=0.0, neginf=0.0) - np.nan_to_num(ref, nan=0.0))
    r = np.clip(np.nan_to_num(ref, nan=0.0), 0.0, 1.0)
    c = np.clip(np.nan_to_num(cand, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    hwc = lambda t: t[0].transpose(1, 2, 0) if t.ndim == 4 else t.transpose(1, 2, 0)  # noqa: E731
    return {
        "max_abs": float(err.max(initial=0.0)),
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "p99_abs": float(np.quantile(err, 0.99)) if err.size else 0.0,
        "psnr": psnr(c, r),
        "ssim": ssim(hwc(c), hwc(r)),
        "nonfinite": bad,
        "nonfinite_reference": ref_bad,
    }


@dataclass
class ImageResult:
    name: str
    shape: tuple[int, ...]
    stats: dict
    gt_psnr_reference: float | None = None
    gt_psnr_candidate: float | None = None


@dataclass
class ParityReport:
    """Parity of a candidate against a reference on a set of images, checked against a tolerance."""

    reference: str
    candidate: str
    precision: str
    output: str
    tolerance: Tolerance
    images: list[ImageResult] = field(default_factory=list)

    # -- summaries over images --------------------------------------------------------------------
    def summary(self) -> dict:
        s = [r.stats for r in self.images]
        out = {
            "images": len(s),
            "max_abs": max((x["max_abs"] for x in s), default=0.0),
            "mean_abs": float(np.mean([x["mean_abs"] for x in s])) if s else 0.0,
            "p99_abs": max((x["p99_abs"] for x in s), default=0.0),
            "psnr_min": min((x["psnr"] for x in s), default=math.inf),
            "psnr_mean": _mean_psnr([x["psnr"] for x in s]),
            "ssim_min": min((x["ssim"] for x in s), default=1.0),
            "ssim_mean": float(np.mean([x["ssim"] for x in s])) if s else 1.0,
            "nonfinite": sum(x["nonfinite"] for x in s),
        }
        gt = [r for r in self.images if r.gt_psnr_reference is not None]
        if gt:
            out["gt_psnr_reference"] = float(np.mean([r.gt_psnr_reference for r in gt]))
            out["gt_psnr_candidate"] = float(np.mean([r.gt_psnr_candidate for r in gt]))
            out["gt_drop"] = out["gt_psnr_reference"] - out["gt_psnr_candidate"]
        return out

    def smallest_passing(self) -> dict:
        """The tightest tolerance this candidate would have met (Polygraphy style)."""
        s = self.summary()
        return {"max_abs": s["max_abs"], "min_psnr": s["psnr_min"], "max_gt_drop": s.get("gt_drop")}

    def failures(self) -> list[str]:
        s, t = self.summary(), self.tolerance
        out = []
        if s["nonfinite"]:
            out.append(f"{s['nonfinite']} NaN/Inf values in the candidate's output")
        if t.max_abs is not None and s["max_abs"] > t.max_abs:
            out.append(f"max abs error {s['max_abs']:.3g} > {t.max_abs:g}")
        if t.min_psnr is not None and s["psnr_min"] < t.min_psnr:
            out.append(f"PSNR vs reference {s['psnr_min']:.2f} dB (worst image) < {t.min_psnr:g} dB")
        if t.max_gt_drop is not None and "gt_drop" in s and s["gt_drop"] > t.max_gt_drop:
            out.append(f"ground-truth PSNR drop {s['gt_drop']:.2f} dB > {t.max_gt_drop:g} dB")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_json(self) -> dict:
        return _finite({
            "reference": self.reference,
            "candidate": self.candidate,
            "precision": self.precision,
            "output": self.output,
            "passed": self.passed,
            "failures": self.failures(),
            "tolerance": asdict(self.tolerance),
            "smallest_passing_tolerance": self.smallest_passing(),
            "summary": self.summary(),
            "images": [{"name": r.name, "shape": list(r.shape), **r.stats,
                        "gt_psnr_reference": r.gt_psnr_reference, "gt_psnr_candidate": r.gt_psnr_candidate}
                       for r in self.images],
        })

    def lines(self) -> list[str]:
        """A short human-readable report."""
        s, t = self.summary(), self.tolerance
        lines = [f"{self.candidate} ({self.precision}) vs {self.reference}, output {self.output!r}, "
                 f"{s['images']} image(s)",
                 f"  abs error: max {s['max_abs']:.3g}  mean {s['mean_abs']:.3g}  p99 {s['p99_abs']:.3g}",
                 f"  PSNR vs reference: worst {_db(s['psnr_min'])}  mean {_db(s['psnr_mean'])};  "
                 f"SSIM worst {s['ssim_min']:.5f};  NaN/Inf: {s['nonfinite']}"]
        if "gt_drop" in s:
            lines.append(f"  PSNR vs ground truth: reference {s['gt_psnr_reference']:.2f} dB, candidate "
                         f"{s['gt_psnr_candidate']:.2f} dB (drop {s['gt_drop']:+.2f} dB)")
        need = ", ".join(f"{k} {v:g}" for k, v in asdict(t).items() if v is not None)
        small = self.smallest_passing()
        have = ", ".join(f"{k} {_fmt(small[k])}" for k, v in asdict(t).items() if v is not None and small[k] is not None)
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures())
        lines.append(f"  tolerance ({self.precision}): {need}; smallest passing: {have}  -> {verdict}")
        return lines


def run_parity(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    items: Iterable[tuple[Path, Path | None]],
    precision: str = "fp32",
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    output: str = "output",
    progress: Callable[[str], None] | None = None,
    size: tuple[int, int] | None = None,
    scale: int = 1,
) -> ParityReport:
    """Run both models (float NCHW -> float NCHW, e.g. ``Enhancer.run_tensor``) on every image.

    ``items`` are ``(input, ground truth or None)`` paths (see
    :func:`deepfusionnet.runtime.measure.pairs.find_items`).
    Images run one at a time, so memory stays at one frame per model. ``size`` = ``(H, W)`` of a
    fixed-size graph: every frame is first padded (or cropped) to it, so both models see the same
    pixels (padding is not neutral for a network with global pooling: CBAM averages the padding too);
    statistics cover the real pixels only.
    """
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import to_image, to_tensor

    from deepfusionnet.runtime.measure.evaluate import prepare_pair

    report = ParityReport(reference_name, candidate_name, precision, output, tolerance_for(precision))
    for path, gt_path in items:
        if scale > 1 and gt_path is not None:
            # An SR model upscales normal-light frames, not dark ones: as in dfn eval, its input is the
            # blurred, downscaled ground truth.
            gt = read_image(gt_path)
            img, gt = prepare_pair(gt, gt, Path(path).name, scale, "lol")
        else:
            img = read_image(path)
            gt = read_image(gt_path) if gt_path is not None else None
        x = to_tensor(img)
        if size is not None:
            x, h, w = _fit(x, size)
            ref = reference(x)[..., : h * scale, : w * scale]
            cand = candidate(x)[..., : h * scale, : w * scale]
            gt = gt[: h * scale, : w * scale] if gt is not None else None
        else:
            ref, cand = reference(x), candidate(x)
        res = ImageResult(Path(path).name, tuple(cand.shape), error_stats(ref, cand))
        if gt is not None:
            ri, ci = to_image(ref), to_image(cand)
            if gt.shape == ri.shape:
                res.gt_psnr_reference, res.gt_psnr_candidate = psnr(ri, gt), psnr(ci, gt)
        report.images.append(res)
        if progress:
            progress(f"{res.name}: max abs {res.stats['max_abs']:.3g}, PSNR {_db(res.stats['psnr'])}")
    return report


def _fit(x: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Crop ``x`` (top-left) to at most ``size`` and mirror-pad it to exactly ``size``; returns the
    padded frame and the height/width of its real pixels."""
    h, w = size
    x = x[..., :h, :w]
    rh, rw = x.shape[2:]
    return np.pad(x, ((0, 0), (0, 0), (0, h - rh), (0, w - rw)), mode="symmetric"), rh, rw


def _mean_psnr(values: list[float]) -> float:
    # Identical images give inf; average the finite ones (inf only when every image is identical).
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.inf


def _db(v: float) -> str:
    return "inf dB (identical)" if math.isinf(v) else f"{v:.2f} dB"


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.3g}"


def _finite(obj):
    """JSON has no Infinity: write identical-output PSNR as the string "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else None)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _torch_device(model: str, backend: str, device: str | None) -> dict:
    """``{"device": device}`` when ``model`` runs on the torch backend (named, or a weights file's
    default)."""
    if device is None:
        return {}
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.backends.base import entry, shipped_kind
    from deepfusionnet.runtime.enhancer import backend_for

    name = backend_for(resolve(model, shipped_kind(backend)), backend)
    return {"device": device} if entry(name).device else {}


def compare_models(
    reference: str,
    candidate: str,
    data: str | Path,
    precision: str | None = None,
    limit: int | None = None,
    backend_ref: str = "default",
    backend: str = "default",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    device: str | None = None,
) -> ParityReport:
    """Parity of two models (shipped names or files) on the images or pairs in ``data``.

    Each runs through :func:`deepfusionnet.runtime.enhancer.open_enhancer` (padding, tiling, cropping
    as in production). ``precision`` picks the tolerance; by default the candidate's own (from its
    sidecar or ONNX metadata). ``device`` places whichever side runs on the torch backend.
    """
    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.runtime.measure.pairs import find_items

    items = find_items(data, limit)
    opts = {"threads": threads} if threads else {}
    ref_device = _torch_device(reference, backend_ref, device)
    cand_device = _torch_device(candidate, backend, device)
    if device is not None and not (ref_device or cand_device):
        raise DFNError(f"--device {device} places the torch backend, and neither model runs on it here")
    # Parity compares the networks: the exposure gate (the same numpy code on both sides) stays out of it.
    ref = open_enhancer(reference, backend_ref, gate=False, **opts, **ref_device)
    try:
        cand = open_enhancer(candidate, backend, gate=False, **opts, **cand_device)
        try:
            if ref.scale != cand.scale:
                raise ValueError(f"{candidate} upscales {cand.scale}x but {reference} {ref.scale}x: not the same model")
            fixed = cand.fixed_size or ref.fixed_size
            return run_parity(ref.run_tensor, cand.run_tensor, items, precision or cand.artifact.precision,
                              f"{reference} [{ref.backend.name}]", f"{candidate} [{cand.backend.name}]",
                              cand.backend.outputs[0].name, progress, fixed, cand.scale)
        finally:
            cand.close()
    finally:
        ref.close()
