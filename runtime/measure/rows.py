"""One benchmark result row, and the statistics that fill it from a row's timed runs."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Row:
    model: str
    backend: str
    precision: str
    size: str
    status: str = "ok"
    picked: str | None = None
    runs: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    fps: float | None = None
    infer_p50_ms: float | None = None
    infer_mean_ms: float | None = None
    decode_ms: float | None = None
    pre_ms: float | None = None
    post_ms: float | None = None
    load_s: float | None = None
    first_run_ms: float | None = None
    mem_mb: float | None = None
    peak_rss_mb: float | None = None
    speedup_vs_torch: float | None = None
    infer_speedup_vs_torch: float | None = None
    psnr_eval15: float | None = None
    ssim_eval15: float | None = None
    psnr_delta_db: float | None = None
    quality_images: int | None = None
    ran_as: str | None = None  # the precision the backend really ran (runtime.measure.ran_as)
    gflops: float | None = None  # conv MACs x 2 / inference p50
    floor_fraction: float | None = None  # time at the machine's matmul floor / inference p50
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def rss_mb() -> float:
    """The process's resident memory now (VmRSS), in MB; NaN where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"p50": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def fill_timings(row: Row, samples: list[dict]) -> None:
    """End-to-end and inference statistics of ``samples`` (one ``{part: seconds}`` per timed run)."""
    e2e = _stats([1000 * sum(t.values()) for t in samples])
    inf = _stats([1000 * t["infer"] for t in samples])
    row.runs = len(samples)
    row.p50_ms, row.p90_ms, row.p99_ms, row.mean_ms = e2e["p50"], e2e["p90"], e2e["p99"], e2e["mean"]
    row.fps = 1000 / e2e["mean"]
    row.infer_p50_ms, row.infer_mean_ms = inf["p50"], inf["mean"]
    for part in ("decode", "pre", "post"):
        setattr(row, f"{part}_ms", float(np.median([1000 * t.get(part, 0.0) for t in samples])))


def speedups(group: list[Row]) -> None:
    """Each row's p50 against the PyTorch eager FP32 row of its (model, size) group, when there is one."""
    ref = next((r for r in group if r.backend == "torch" and r.precision == "fp32" and r.p50_ms), None)
    for r in group:
        if ref and r.p50_ms:
            r.speedup_vs_torch = ref.p50_ms / r.p50_ms
            r.infer_speedup_vs_torch = ref.infer_p50_ms / r.infer_p50_ms
