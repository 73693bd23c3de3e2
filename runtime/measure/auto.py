"""``--backend auto``: the fastest backend and precision for an artifact on this machine, measured once.

Candidates are every available backend x every precision of the artifact that passed a quality gate:

* the FP32 ONNX on ONNX Runtime (the reference every other candidate is compared with);
* precision variants beside it (``X.fp16.onnx``, ``X.int8.onnx``), only when their sidecar
  (``X.int8.onnx.json``) records a passed parity check from ``dfn export``; on this backend their
  output must still be finite and within 30 dB PSNR of the FP32 reference (a sanity check that the
  backend runs the graph as intended; the quality gate proper was the export's);
* precisions a backend applies internally to the FP32 graph (OpenVINO's BF16 hint on CPUs with
  AVX512_BF16/AMX, its F16 hint on CPUs with FP16 arithmetic), which nobody has gated yet: these
  must reach **45 dB PSNR against the FP32 output** on a real night frame (``samples/night/lol-22.png``
  resized to the requested size). Why 45 dB: the model sits ~20-27 dB from the ground truth, and an
  independent perturbation at 45 dB moves that by under 0.02 dB (MSEs add), far inside the 0.1 dB the
  project allows a faster precision to cost on eval15.

Each qualifying candidate is warmed up and timed (median of a few runs, inference only) on a bounded
frame (:func:`decision_size`). Every candidate is loaded at once (their runs interleave), so their
frames together get a fixed pixel budget, half a default 1024x1024 tile: a frame within its share
(4 candidates: 360x360) is decided at its own size, a larger one at its size with each side capped at
the share's side (the night sample resized to it, like every decision frame). That
keeps a first decision's memory near one decided run's whatever the number of candidates: whole
1920x1080 frames on four candidates peaked at 5.1 GiB (7.9 GiB in an earlier run) where the
enhancement, in 1024-pixel tiles, needs 0.7 GiB. Per-pixel speed is what decides; the ranking on the
bounded frame is taken to hold for larger frames (which run in tiles).

The fastest wins. The decision is cached as JSON in ``$DFN_CACHE/auto.json`` (default
``~/.cache/deepfusionnet/auto.json``) keyed by the artifacts' sha256, the size class (the decision
frame's size: every frame larger than one share shares one), the CPU/GPU and the library versions, so
later calls reuse it without measuring.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from deepfusionnet.errors import DFNError, native_reason
from deepfusionnet.runtime.artifacts import file_sha256 as artifact_sha256
from deepfusionnet.runtime.artifacts import read_sidecar
from deepfusionnet.runtime.backends.base import BACKENDS, Backend, load_backend, unavailable
from deepfusionnet.runtime.enhancer import check_image_io, network_fn
from deepfusionnet.runtime.images import atomic_write_bytes
from deepfusionnet.runtime.measure.frames import synthetic_frame
from deepfusionnet.runtime.measure.machine import isa_features, machine_key
from deepfusionnet.runtime.measure.plan import base_artifact, variant_path
from deepfusionnet.runtime.metrics import psnr
from deepfusionnet.runtime.processing import to_tensor

DEFAULT_SIZE = (600, 400)
GATE_DB = 45.0  # backend-internal precision vs FP32 on a real frame
VARIANT_SANITY_DB = 30.0  # an export-gated variant, run on this backend, vs FP32
TIMED_RUNS = 3
VERSION = 2  # bump when the candidates, gate or decision frame change, so old decisions are re-measured
# The pixels every candidate's decision frame holds together: half a 1024x1024 frame, so the live
# candidates of a first decision hold about what one decided 1920x1080 run holds (measured:
# benchmarks/experiments.md, 2026-12-05, session 27).
DECISION_PIXELS = 1024 * 1024 // 2


@dataclass
class Candidate:
    """One (backend, graph, options) that auto measures; the measured fields are filled by the trial."""

    backend: str
    path: str
    options: dict
    precision: str
    gate: str  # "reference" | "internal" | "variant"
    label: str = ""
    latency_ms: float | None = None  # median of the timed runs (inference only) on the decision frame
    psnr_vs_fp32: float | None = None  # against the reference's output on the same frame
    passed: bool | None = None  # met the quality gate (the reference: a finite output); None: not tried
    error: str | None = None  # why it could not run here


@dataclass
class Choice:
    """What ``auto`` picked: load it with ``load_backend(backend, path, **options)``."""

    backend: str
    path: str
    options: dict
    precision: str
    label: str
    latency_ms: float | None
    size: tuple[int, int]
    cached: bool = False
    candidates: list = field(default_factory=list)
    decided_on: tuple[int, int] | None = None  # the size class: the frame the candidates were timed on


def decision_side(n_candidates: int) -> int:
    """The side of one candidate's share of :data:`DECISION_PIXELS`, a multiple of 8 (the input multiple)."""
    return max(64, int((DECISION_PIXELS / max(n_candidates, 1)) ** 0.5) // 8 * 8)


def decision_size(size: tuple[int, int], n_candidates: int) -> tuple[int, int]:
    """The (width, height) auto measures ``n_candidates`` on for frames of ``size``, which is also their
    size class: the frame itself within one candidate's share of :data:`DECISION_PIXELS`, else each side
    capped at :func:`decision_side`."""
    w, h = int(size[0]), int(size[1])
    side = decision_side(n_candidates)
    if w * h <= side * side:
        return w, h
    return min(w, side), min(h, side)


def cache_path() -> Path:
    root = os.environ.get("DFN_CACHE")
    return Path(root) / "auto.json" if root else Path.home() / ".cache" / "deepfusionnet" / "auto.json"


@lru_cache(maxsize=64)
def _sha256(path: str, mtime: float, size: int) -> str:
    return artifact_sha256(path)


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_mtime, st.st_size)


def parity_passed(path: Path) -> bool:
    """Whether ``path``'s sidecar records a passed parity check (read defensively: any shape, any error -> no)."""
    try:
        sc = read_sidecar(path)
    except DFNError:
        return False
    parity = sc.parity
    if isinstance(parity, list):
        return bool(parity) and all(isinstance(p, dict) and _passed(p) for p in parity)
    return isinstance(parity, dict) and _passed(parity)


def _passed(d: dict) -> bool:
    for key in ("passed", "pass", "ok"):
        if key in d:
            return d[key] is True
    # One check per backend, e.g. {"onnxruntime": {"passed": true, ...}}: all of them must pass.
    checks = [v for v in d.values() if isinstance(v, dict)]
    return bool(checks) and all(_passed(v) for v in checks)


def candidates(base: Path) -> list[Candidate]:
    """Every (backend, precision) worth measuring for the FP32 ONNX ``base`` on this machine: each
    registered ``auto`` backend that reads ONNX and can run here, at every precision it selects
    internally that this CPU has, then every precision variant beside ``base`` that passed its export
    parity check, on each backend that runs such variants. The first is the FP32 reference."""
    usable = [n for n, e in BACKENDS.items() if e.auto and "onnx" in e.loads and unavailable(n) is None]
    isa = set(isa_features())
    out: list[Candidate] = []
    for name in usable:
        e = BACKENDS[name]
        for prec, opts in e.precisions.items():
            features = e.isa.get(prec, ((), ""))[0]
            if not features or isa & set(features):
                out.append(Candidate(name, str(base), {**e.row_options, **opts}, prec,
                                     "internal" if out else "reference"))
    for prec in dict.fromkeys(p for n in usable for p in BACKENDS[n].variants):
        path = variant_path(base, prec)
        if not (path.is_file() and parity_passed(path)):
            continue
        out += [Candidate(n, str(path), dict(BACKENDS[n].row_options), prec, "variant")
                for n in usable if prec in BACKENDS[n].variants]
    for c in out:
        c.label = c.label or f"{c.backend} {c.precision}"
    return out


def _gate_frame(size: tuple[int, int]) -> np.ndarray:
    return to_tensor(synthetic_frame(size))


def _runner(backend: Backend, scale: int, multiple: int, path=None):
    """The frame path every caller uses (:func:`~deepfusionnet.runtime.enhancer.network_fn`): a fixed-size
    graph is measured on the frame padded or tiled to its size, as it would run."""
    return network_fn(backend, scale, multiple, path=path)


def measure(cands: list[Candidate], size: tuple[int, int], multiple: int = 8, runs: int = TIMED_RUNS,
            scale: int = 1) -> None:
    """Gate and time every candidate in place (``passed``, ``psnr_vs_fp32``, ``latency_ms``, ``error``).

    Candidates that pass are timed round-robin (run 1 of each, then run 2 of each, ...), so a load
    change on a shared machine does not favour whichever candidate happened to run in a quiet moment.
    """
    x = _gate_frame(size)
    ref = None
    live: list[tuple[Candidate, Backend, list, object]] = []
    try:
        for c in cands:
            try:
                be = load_backend(c.backend, c.path, **c.options)
            except DFNError as exc:
                if c.gate == "reference":  # the model itself fails: say so as a named backend would
                    raise
                c.passed, c.error = False, str(exc)
                continue
            run = _runner(be, scale, multiple, Path(c.path))
            try:
                if c.gate == "reference":
                    check_image_io(be, c.path)  # a foreign model: the named backends' one line, not a race
                y = run(x)  # warm-up (OpenVINO compiles here), and the gate's output
                if c.gate == "reference":
                    ref = y
                    c.passed = bool(np.isfinite(y).all())
                else:
                    if ref is None:
                        raise DFNError("no FP32 reference output to gate against")
                    c.psnr_vs_fp32 = min(psnr(np.clip(y, 0, 1), np.clip(ref, 0, 1)), 200.0) if np.isfinite(y).all() else None
                    need = GATE_DB if c.gate == "internal" else VARIANT_SANITY_DB
                    c.passed = bool(c.psnr_vs_fp32 is not None and c.psnr_vs_fp32 >= need)
            except Exception as exc:  # a candidate that cannot run here is out of the race, not a crash
                if c.gate == "reference" and isinstance(exc, DFNError):  # e.g. NaN output: the model's fault
                    be.close()
                    raise
                c.passed, c.error = False, f"{type(exc).__name__}: {native_reason(exc)}"
            if c.passed:
                live.append((c, be, [], run))
            else:
                be.close()
        for _ in range(runs):
            for c, be, times, run in live:
                t0 = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t0)
        for c, _, times, _ in live:
            c.latency_ms = float(np.median(times)) * 1000
    finally:
        for _, be, _, _ in live:
            be.close()


def _base_onnx(model: str | Path, artifacts=None) -> tuple[Path, int, int]:
    art = base_artifact(str(model), artifacts)
    if art.kind != "onnx":
        raise DFNError(f"{art.path}: --backend auto chooses among ONNX backends; give an .onnx file or a shipped name")
    return art.path, art.multiple, art.scale


def _key(base: Path, cands: list[Candidate], size: tuple[int, int]) -> str:
    files = sorted({c.path for c in cands})
    ident = {"v": VERSION, "files": {Path(p).name: file_sha256(Path(p)) for p in files}, "size": list(size),
             "machine": machine_key(), "candidates": sorted(c.label for c in cands)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or corrupt cache only costs one measurement


def _save_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError:
        pass  # a read-only home must not stop inference; the next run measures again


def choose_with_options(model: str | Path, size: tuple[int, int] | None = None, artifacts=None,
                        refresh: bool = False) -> Choice:
    """The fastest gated (backend, artifact, options) for ``model`` at ``size`` = (width, height),
    measured on :func:`decision_size` (``Choice.decided_on``) and cached per size class."""
    base, multiple, scale = _base_onnx(model, artifacts)
    size = tuple(size) if size else DEFAULT_SIZE
    cands = candidates(base)
    decided_on = decision_size(size, len(cands))
    key = _key(base, cands, decided_on)
    cpath = cache_path()
    cache = _load_cache(cpath)
    hit = cache.get(key)
    if hit and not refresh and Path(hit.get("path", "")).is_file():
        return Choice(hit["backend"], hit["path"], hit["options"], hit["precision"], hit["label"],
                      hit.get("latency_ms"), size, cached=True, candidates=hit.get("candidates", []),
                      decided_on=decided_on)
    measure(cands, decided_on, multiple, scale=scale)
    ok = [c for c in cands if c.passed and c.latency_ms is not None]
    if not ok:
        errors = "; ".join(f"{c.label}: {c.error}" for c in cands if c.error)
        raise DFNError(f"{base}: no backend could run it ({errors or 'every candidate failed its gate'})")
    best = min(ok, key=lambda c: c.latency_ms)
    record = {"backend": best.backend, "path": best.path, "options": best.options, "precision": best.precision,
              "label": best.label, "latency_ms": best.latency_ms, "size": list(size),
              "decided_on": list(decided_on), "created": time.time(),
              "candidates": [asdict(c) for c in cands]}
    cache[key] = record
    _save_cache(cpath, cache)
    return Choice(best.backend, best.path, best.options, best.precision, best.label, best.latency_ms, size,
                  cached=False, candidates=record["candidates"], decided_on=decided_on)


def choose(model: str, size: tuple[int, int] | None = None) -> tuple[str, str]:
    """``(backend name, model path)`` of :func:`choose_with_options`' pick.

    The pick may need options (OpenVINO's precision hint); load it with :func:`open_choice` or call
    :func:`choose_with_options` to get them.
    """
    c = choose_with_options(model, size)
    return c.backend, c.path


def open_choice(choice: Choice) -> Backend:
    return load_backend(choice.backend, choice.path, **choice.options)
