"""Accuracy-driven INT8 fallback: keep whole network stages float until the INT8 graph tracks FP32.

Which stage outgrows INT8 differs between two fine-tunes of the same network (session 9: the decoder
stage that reads the bottleneck in one, the next one up in another; the input-side encoder stage on the
darkest frames), so no fixed exclusion list holds for users' own weights. This is the search that
TensorRT users run by hand with Polygraphy's ``debug precision``, done on the ONNX Q/DQ graph with
ONNX Runtime on the CPU:

1. quantize with the structural exclusions, calibrating once (ONNX Runtime's calibration cache makes
   every later quantization of the same graph a few seconds);
2. run ``check`` frames (not the calibration frames, and not the frames the export's parity check
   reports on) through FP32 and INT8, and take the worst frame's PSNR between them;
3. while it is below ``target_db``: try each still-quantized stage float and keep, among those that
   lift the mean over the check frames by at least ``min_mean_gain`` dB, the one that lifts the worst
   frame most; stop when none does (at most ``max_steps`` stages).

The mean-gain condition is what makes the choice carry over to other frames. The enhancer decides each
frame's exposure globally, and on about 3% of frames any small perturbation tips that decision (session
10, the stage-10 weights, 254 training frames at 600x400: 7 below 32 dB with dec1 float, 6 with dec1, enc1
and enc2 float). Choosing by the worst frame alone kept enc1 and enc2 float for that: 16 check frames
went from 31.9 to 35.4 dB while their mean did not move (42.9 -> 43.6). A stage whose INT8 noise matters
lifts every frame: dec2, dec1 and enc1 of another fine-tune lifted the mean 36.8 -> 44.9 -> 52.3.

A stage is a conv's module path (``/dec1/convs/convs.0/convs.0.0/Conv`` -> ``dec1``): its convs share a
resolution and feed one another, so the error of one shows in the next.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deepfusionnet.export.precision import conv_names, conv_stage, int8_from_onnx
from deepfusionnet.runtime.backends.onnxruntime import exact_int8
from deepfusionnet.runtime.metrics import psnr

DEFAULT_TARGET_DB = 35.0  # the export parity tolerance is 32 dB worst-frame on other frames: keep a margin
DEFAULT_MAX_STEPS = 4
DEFAULT_MIN_MEAN_GAIN = 1.0


@dataclass
class FallbackResult:
    proto: object
    excluded: list[str]
    method: str
    steps: list[dict] = field(default_factory=list)  # {"float": stage, "worst_db": ..., "mean_db": ...}

    @property
    def stages_kept_float(self) -> list[str]:
        return [s["float"] for s in self.steps if s["float"]]


def quantized_stages(graph, excluded: Iterable[str], protect: Iterable[str] = ()) -> dict[str, list[str]]:
    """Stage -> its convs that are still quantized, leaving out stages holding a ``protect`` conv
    (ones the user asked to quantize: the search never overrides them)."""
    excluded, protect = set(excluded), set(protect)
    stages: dict[str, list[str]] = {}
    for conv in conv_names(graph):
        if conv not in excluded:
            stages.setdefault(conv_stage(conv), []).append(conv)
    return {s: convs for s, convs in stages.items() if not protect.intersection(convs)}


def psnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """:func:`~deepfusionnet.runtime.metrics.psnr`, capped at 100 dB so identical outputs stay finite
    (the sidecar is JSON)."""
    return min(psnr(ref, out), 100.0)


def run_graph(proto, feeds: list[dict], threads: int | None = None) -> list[np.ndarray]:
    """First output of ``proto`` for every feed, on ONNX Runtime's CPU provider (one session)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    exact_int8(so)
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def int8_with_fallback(proto, reader, checks: list[dict], method: str = "percentile",
                       exclude: Iterable[str] = (), protect: Iterable[str] = (),
                       target_db: float = DEFAULT_TARGET_DB, max_steps: int = DEFAULT_MAX_STEPS,
                       min_mean_gain: float = DEFAULT_MIN_MEAN_GAIN, threads: int | None = None,
                       progress: Callable[[str], None] = lambda s: None) -> FallbackResult:
    """Quantize ``proto`` (FP32) to INT8 Q/DQ, keeping stages float until the worst of ``checks``
    (input feeds) reaches ``target_db`` PSNR against FP32; ``target_db <= 0`` or no checks: no search.

    ``exclude``: nodes float from the start; ``protect``: convs never made float by the search.
    Returns the last graph tried even when the target is not reached (the export's parity check
    decides); ``steps`` records each round.
    """
    exclude = sorted(set(exclude))
    with tempfile.TemporaryDirectory(prefix="dfn-int8-search-") as tmp:
        cache = Path(tmp, "calibration.json")
        q, excluded, used = int8_from_onnx(proto, reader, method, exclude=exclude, calibration_cache=cache)
        # a histogram method that fell back to MinMax cached MinMax ranges: reuse them as such
        again = "minmax" if used.startswith("minmax") else method
        result = FallbackResult(q, excluded, used)
        if target_db <= 0 or not checks:
            return result
        ref = run_graph(proto, checks, threads)

        def score(graph) -> tuple[float, float]:
            db = [psnr_db(r, o) for r, o in zip(ref, run_graph(graph, checks, threads))]
            return min(db), float(np.mean(db))

        worst, mean = score(q)
        result.steps.append({"float": None, "worst_db": round(worst, 2), "mean_db": round(mean, 2)})
        progress(f"INT8 fallback: worst of {len(checks)} check frames {worst:.1f} dB vs FP32 (target {target_db:g})")
        while worst < target_db and len(result.steps) <= max_steps:
            stages = quantized_stages(proto.graph, result.excluded, protect)
            if not stages:
                break
            tried = []
            for stage, convs in stages.items():
                qs, ex, _ = int8_from_onnx(proto, reader, again, exclude=result.excluded + convs,
                                           calibration_cache=cache)
                tried.append((*score(qs), stage, qs, ex))
            useful = [t for t in tried if t[1] >= mean + min_mean_gain]
            if not useful:
                progress(f"INT8 fallback: no stage lifts the mean by {min_mean_gain:g} dB; the rest is not one "
                         "stage's error, stopping")
                break
            worst, mean, stage, q, ex = max(useful, key=lambda t: (t[0], t[1]))
            result.proto, result.excluded = q, ex
            result.steps.append({"float": stage, "worst_db": round(worst, 2), "mean_db": round(mean, 2)})
            progress(f"INT8 fallback: {stage} float -> worst {worst:.1f} dB, mean {mean:.1f}")
        return result
