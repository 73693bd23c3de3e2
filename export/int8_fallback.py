"""Accuracy-driven INT8 fallback: keep whole network stages float until the INT8 graph tracks FP32.

Which stage outgrows INT8 differs between two fine-tunes of the same network, so no fixed exclusion list
holds for users' own weights. This is the search TensorRT users run by hand with Polygraphy's
``debug precision``, done on the ONNX Q/DQ graph with ONNX Runtime on the CPU:

1. quantize with the structural exclusions, calibrating once (ONNX Runtime's calibration cache makes
   every later quantization of the same graph a fraction of a second);
2. run ``check`` frames (not the calibration frames, and not the frames the export's parity check
   reports on) through FP32 and INT8, and take the worst frame's PSNR between them;
3. below ``target_db``: measure each still-quantized stage's own error (that stage INT8, the others
   float) once, and make stages float in order of their mean error until the target holds (at most
   ``max_steps`` stages).

Ranking by the mean error over the check frames is what makes the choice carry over to other frames:
the enhancer decides each frame's exposure globally, and on a few percent of frames any small
perturbation tips that decision, so a stage chosen for the worst frame alone buys nothing elsewhere; a
stage whose INT8 noise matters hurts every frame (docs/export.md has the measurements). Measuring each
stage alone, rather than trying each float on top of the others, sees a stage whose error another
stage's larger error hides, and takes one round of trials instead of one per stage kept float.

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
DEFAULT_NEGLIGIBLE_DB = 10.0  # a stage whose own INT8 error is this far under the target cannot matter


@dataclass
class FallbackResult:
    proto: object
    excluded: list[str]
    method: str
    steps: list[dict] = field(default_factory=list)  # {"float": stage, "worst_db": ..., "mean_db": ...}
    trials: dict = field(default_factory=dict)  # stage -> {"worst_db", "mean_db"} with that stage alone float

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


def _bar(total: int, desc: str):
    """A progress bar on stderr (hidden when stderr is not a terminal: log lines say the same)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="graph", file=sys.stderr, disable=None, leave=False)


def _mse(db: list[float]) -> np.ndarray:
    return np.power(10.0, -np.asarray(db, np.float64) / 10)


def _db(mse: np.ndarray) -> np.ndarray:
    return -10 * np.log10(np.maximum(mse, 1e-10))


@dataclass
class _Trials:
    """Quantizes ``proto`` with other exclusions (reusing the calibration cache) and scores the result
    on the check frames against FP32."""

    proto: object
    reader: object
    checks: list[dict]
    method: str
    cache: Path
    threads: int | None
    ref: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ref = run_graph(self.proto, self.checks, self.threads)

    def score(self, graph) -> list[float]:
        """PSNR of ``graph`` against FP32 on every check frame."""
        return [psnr_db(r, o) for r, o in zip(self.ref, run_graph(graph, self.checks, self.threads))]

    def quantize(self, exclusions: list[str]) -> tuple[object, list[str], list[float]]:
        """``(graph, its excluded nodes, its PSNR per check frame)`` with ``exclusions`` kept float."""
        graph, ex, _ = int8_from_onnx(self.proto, self.reader, self.method, exclude=exclusions,
                                      calibration_cache=self.cache)
        return graph, ex, self.score(graph)


def int8_with_fallback(
    proto,
    reader,
    checks: list[dict],
    method: str = "percentile",
    exclude: Iterable[str] = (),
    protect: Iterable[str] = (),
    target_db: float = DEFAULT_TARGET_DB,
    max_steps: int = DEFAULT_MAX_STEPS,
    negligible_db: float = DEFAULT_NEGLIGIBLE_DB,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> FallbackResult:
    """Quantize ``proto`` (FP32) to INT8 Q/DQ, keeping stages float until the worst of ``checks``
    (input feeds) reaches ``target_db`` PSNR against FP32; ``target_db <= 0`` or no checks: no search.

    Sensitivity, measured once: each still-quantized stage runs INT8 *alone* (every other candidate
    stage float), which shows its own error unmasked by the others'. Errors of independent stages add
    (MSE), so the stages are made float in order of their mean error until the sum left over predicts
    the target on every check frame; that choice is then verified and extended one stage at a time
    while the measured worst frame still misses the target (at most ``max_steps`` stages in all). A
    stage whose solo error is ``negligible_db`` below the target is never made float: it cannot matter.

    ``exclude``: nodes float from the start; ``protect``: convs never made float by the search.
    Returns the last graph tried even when the target is not reached (the export's parity check
    decides); ``steps`` records each verified graph, ``trials`` each stage's solo INT8 error.
    """
    exclude = sorted(set(exclude))
    with tempfile.TemporaryDirectory(prefix="dfn-int8-search-") as tmp:
        cache = Path(tmp, "calibration.json")
        q, excluded, used = int8_from_onnx(proto, reader, method, exclude=exclude, calibration_cache=cache)
        result = FallbackResult(q, excluded, used)
        if target_db <= 0 or not checks:
            return result
        # a histogram method that fell back to MinMax cached MinMax ranges: reuse them as such
        again = "minmax" if used.startswith("minmax") else method
        trials = _Trials(proto, reader, checks, again, cache, threads)
        db = trials.score(q)
        _record(result, None, db)
        progress(f"INT8 fallback: worst of {len(checks)} check frames {min(db):.1f} dB vs FP32 "
                 f"(target {target_db:g})")
        if min(db) >= target_db:
            return result
        stages = quantized_stages(proto.graph, result.excluded, protect)
        solo = _solo_errors(trials, stages, result)
        order = _float_order(solo, target_db, negligible_db, max_steps)
        if not order:
            progress("INT8 fallback: no stage's own error comes near the target; the rest is not one "
                     "stage's, stopping")
            return result
        return _verify(trials, result, stages, solo, order, target_db, progress)


def _record(result: FallbackResult, stage: str | None, db: list[float]) -> None:
    result.steps.append(
        {"float": stage, "worst_db": round(min(db), 2), "mean_db": round(float(np.mean(db)), 2)}
    )


def _solo_errors(trials: _Trials, stages: dict[str, list[str]], result: FallbackResult
                 ) -> dict[str, np.ndarray]:
    """Each stage's own error (MSE per check frame) with it alone INT8; recorded in ``result.trials``."""
    every = [c for convs in stages.values() for c in convs]
    solo: dict[str, np.ndarray] = {}
    with _bar(len(stages), "INT8 fallback: each stage's own error") as bar:
        for stage, convs in stages.items():
            _, _, sdb = trials.quantize(result.excluded + [c for c in every if c not in convs])
            solo[stage] = _mse(sdb)
            bar.update(1)
    result.trials = {
        s: {"worst_db": round(float(_db(m).min()), 2), "mean_db": round(float(_db(m.mean())), 2)}
        for s, m in solo.items()
    }
    return solo


def _float_order(solo: dict[str, np.ndarray], target_db: float, negligible_db: float, max_steps: int
                 ) -> list[str]:
    """The stages to make float, largest mean error first, leaving out the negligible ones."""
    limit = 10 ** (-(target_db + negligible_db) / 10)
    return [s for s in sorted(solo, key=lambda s: -solo[s].mean()) if solo[s].mean() >= limit][:max_steps]


def _verify(trials: _Trials, result: FallbackResult, stages: dict[str, list[str]],
            solo: dict[str, np.ndarray], order: list[str], target_db: float,
            progress: Callable[[str], None]) -> FallbackResult:
    """Make the predicted stages float, measure, and add the next stage while the target is missed."""
    # fewest stages (in order) whose float leaves a predicted error within the target on every frame
    k = next(
        (
            k
            for k in range(1, len(order) + 1)
            if _db(sum(solo[s] for s in solo if s not in order[:k]) + 0.0).min() >= target_db
        ),
        len(order),
    )
    while True:
        graph, ex, db = trials.quantize(result.excluded + [c for s in order[:k] for c in stages[s]])
        result.proto = graph
        for s in order[len(result.stages_kept_float) : k]:
            result.steps.append({"float": s})
        result.steps[-1].update(worst_db=round(min(db), 2), mean_db=round(float(np.mean(db)), 2))
        progress(f"INT8 fallback: {', '.join(order[:k])} float -> worst {min(db):.1f} dB, "
                 f"mean {np.mean(db):.1f}")
        if min(db) >= target_db or k >= len(order):
            result.excluded = ex
            return result
        k += 1
