"""The harness behind ``dfn bench``: latency (and optionally eval15 quality) per model x backend x precision x size.

Method, so the numbers mean the same on every machine:

* Every row of one (model, size) group is loaded first, warmed up, and then timed **round-robin**
  (run 1 of every row, then run 2 of every row, ...). On a shared or throttling machine the load drifts;
  interleaving makes the speed ratios between rows fair even when absolute times are not.
* One timed run is the whole frame path: PNG decode -> pre (to tensor) -> the stages in the
  :class:`~deepfusionnet.runtime.enhancer.Chain` ``dfn enhance`` runs: inference (every backend call)
  and post (padding, the ``fast:`` resize, cropping, between-stage glue, to uint8). Each
  part is timed with :func:`time.perf_counter`; ``p50_ms``/``p90_ms``/``p99_ms``/``mean_ms``/``fps``
  are end to end, ``infer_*`` inference only. With few runs p99 is close to the maximum.
* Frames run whole, untiled, at exactly the requested size (``dfn enhance`` tiles frames over 1024 px).
* ``load_s``: backend load (session creation / model read); ``first_run_ms``: the first inference,
  which includes OpenVINO's per-shape compile and TensorRT's engine build.
* ``mem_mb``: growth of the process's resident memory (VmRSS) across load + first run, i.e. the weights
  and buffers this row added; ``peak_rss_mb``: the process's high-water mark (``ru_maxrss``) after the
  row's first run, which only ever grows. Native allocations (ONNX Runtime, OpenVINO, torch) are
  counted; ``tracemalloc`` would miss them.
* ``speedup_vs_torch``: this row's end-to-end p50 against PyTorch eager FP32 in the same group.
* Quality (optional): mean PSNR/SSIM over a paired set (LOL-v1 ``eval15``), per (model, backend,
  precision), and its difference to FP32 (``psnr_delta_db``: vs PyTorch eager FP32 where measured,
  else ONNX Runtime FP32).

Model specs: a shipped name or a file (``deepfusionnet``, ``x.onnx``); ``A+B`` chains two models (the
enhancer then the 2x SR); ``fast:A+B`` (as ``dfn enhance --fast``; ``half:`` is its older spelling)
runs ``A`` on a frame downscaled 2x and lets ``B`` bring it back to full size.

Backends are the registry's (runtime/backends/base.py): ``ort-cuda`` and ``ort-trt`` are ONNX Runtime's
CUDA and TensorRT execution providers, ``tensorrt`` the native engine backend; ``auto`` is
:mod:`~deepfusionnet.runtime.measure.auto`'s choice. The job is split by module: :mod:`.plan` (what a
row loads), :mod:`.runner` (the loaded row), :mod:`.rows` (timing statistics), :mod:`.scoring`
(quality), :mod:`.report` and :mod:`.plot` (output).

Torch-free: torch rows go through the registered torch backend, which is only imported when asked for.
"""


from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from deepfusionnet.errors import DFNError, native_reason
from deepfusionnet.runtime.measure.floor import fraction_of_floor, machine_floor
from deepfusionnet.runtime.measure.frames import synthetic_frame
from deepfusionnet.runtime.measure.machine import machine_info
from deepfusionnet.runtime.measure.plan import (NOT_MEASURED, PRECISIONS, Unsupported, bench_backends,
                                                parse_model_spec)
from deepfusionnet.runtime.measure.ran_as import ran_as_label, row_macs, stage_ran_as
from deepfusionnet.runtime.measure.rows import Row, fill_timings, peak_rss_mb, rss_mb, speedups
from deepfusionnet.runtime.measure.runner import Runner, open_runner
from deepfusionnet.runtime.measure.scoring import quality, quality_deltas


@dataclass
class Settings:
    """What every row of one :func:`bench` call shares."""

    runs: int = 10
    warmup: int = 1
    threads: int | None = None
    artifacts: str | Path | None = None
    quality_pairs: list[tuple[Path, Path]] | None = None
    cache_dir: str | None = None
    skip: Callable | None = None
    device: str | None = None
    log: Callable[[str], None] = lambda s: None
    floor: dict | None = None  # runtime.measure.floor's measurement, or None (off)


def check_grid(backends: list[str], precisions: list[str], runs: int) -> None:
    known = bench_backends()
    for b in backends:
        if b not in known:
            raise DFNError(f"unknown backend {b!r}; choose from: {', '.join(known)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise DFNError(f"unknown precision {p!r}; choose from: {', '.join(PRECISIONS)}")
    if runs < 1:
        raise DFNError("--runs must be at least 1")


def expand_rows(models: list[str], backends: list[str], precisions: list[str], sizes: list[tuple[int, int]]):
    """The (model, backend, precision, size) grid; ``auto`` gets one row per model and size."""
    for m in models:
        for s in sizes:
            for b in backends:
                for p in (["auto"] if b == "auto" else precisions):
                    yield m, b, p, s


def _decode(png: bytes) -> np.ndarray:
    return np.ascontiguousarray(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])


def _open_row(row: Row, model: str, size: tuple[int, int], cfg: Settings, artifacts=None) -> Runner | None:
    """Load ``row``'s stages (its load time in the row), or None with the reason as its status;
    ``artifacts``: this row's own folder of graphs instead of ``cfg.artifacts``."""
    reason = cfg.skip(model, row.backend, row.precision, size) if cfg.skip else None
    if reason:
        row.status = reason
        return None
    t0 = time.perf_counter()
    try:
        runner, detail = open_runner(parse_model_spec(model), row.backend, row.precision, size,
                                     cfg.artifacts if artifacts is None else artifacts,
                                     cfg.threads, cfg.cache_dir, cfg.device)
    except Unsupported as exc:
        row.status = str(exc) if str(exc).startswith(NOT_MEASURED) else f"skipped: {exc}"
        return None
    except DFNError as exc:
        row.status = f"failed: {exc}"
        return None
    row.load_s = time.perf_counter() - t0
    row.detail = detail if artifacts is None else {**detail, "artifacts": str(artifacts)}
    if row.backend == "auto":
        row.picked = " + ".join(s["picked"] for s in detail["stages"])
        row.precision = "/".join(dict.fromkeys(s["picked"].split(" ", 1)[-1] for s in detail["stages"]))
    return runner


def _warm_up(row: Row, runner: Runner, png: bytes, warmup: int, rss0: float) -> bool:
    """The first run (timed apart) and the rest of the warm-up; False (and the row failed) if it fails."""
    frame = _decode(png)
    try:
        t0 = time.perf_counter()
        runner.run(frame)
        row.first_run_ms = (time.perf_counter() - t0) * 1000
        for _ in range(max(warmup - 1, 0)):
            runner.run(frame)
    except Exception as exc:  # a backend failing on this shape/precision is a row result, not a crash
        row.status = f"failed: {type(exc).__name__}: {native_reason(exc)}"
        runner.close()
        return False
    row.mem_mb = rss_mb() - rss0
    row.peak_rss_mb = peak_rss_mb()
    for be, _ in runner.stages:
        if hasattr(be, "execution_precision"):
            row.detail["openvino_precision"] = be.execution_precision()
        if hasattr(be, "providers"):
            row.detail["providers"] = list(be.providers)
    _ran_as(row, runner, frame.shape[1::-1])
    return True


def _ran_as(row: Row, runner: Runner, size: tuple[int, int]) -> None:
    """What each stage really ran in (asked of the compiled model after its first run), and the row's
    conv multiply-adds per precision, for the fraction of the floor."""
    paths = [Path(s["path"]) for s in row.detail.get("stages", [])]
    stages = [stage_ran_as(be, path, in_size)
              for (be, _), path, in_size in zip(runner.stages, paths, runner.stage_inputs(size))]
    row.ran_as = ran_as_label(stages) if stages else None
    row.detail["ran_as"] = stages
    row.detail["macs_by_precision"] = row_macs(stages)


def _floor_fraction(row: Row, floor: dict | None) -> None:
    macs = row.detail.get("macs_by_precision")
    if floor is None or not macs or not row.infer_p50_ms:
        row.detail["floor_note"] = "floor off" if floor is None else "no MACs counted (needs onnx)"
        return
    got = fraction_of_floor(macs, row.infer_p50_ms / 1000, floor)
    row.gflops, row.floor_fraction = got["gflops"], got["floor_fraction"]
    row.detail["floor_note"] = got["floor_note"]


def _time_round_robin(active: list[tuple[Row, Runner, list]], png: bytes, cfg: Settings, label: str) -> None:
    """Every row's i-th run happens close in time to every other row's i-th run."""
    for i in range(cfg.runs):
        for _, runner, samples in active:
            t = {}
            t0 = time.perf_counter()
            rgb = _decode(png)
            t["decode"] = time.perf_counter() - t0
            runner.run(rgb, t)
            samples.append(t)
        cfg.log(f"{label}: run {i + 1}/{cfg.runs}")


def _score(row: Row, runner: Runner, cfg: Settings, done: dict) -> None:
    """The row's quality, measured once per (model, backend, precision or pick)."""
    key = (row.model, row.backend, row.precision if row.backend != "auto" else row.picked,
           row.detail.get("artifacts"))
    if key not in done:
        cfg.log(f"quality: {row.model} {row.backend} {row.precision} on {len(cfg.quality_pairs)} images")
        done[key] = quality(runner, cfg.quality_pairs)
    q = done[key]
    row.psnr_eval15, row.ssim_eval15, row.quality_images = q["psnr"], q["ssim"], q["images"]


def _energy(row: Row, runner: Runner, png: bytes, cfg: Settings) -> None:
    """On a Jetson (tegrastats present): the row's frames back to back for about 2 s while tegrastats
    samples the input rail; mJ per frame = mean power x time / frames. Elsewhere: "not a Jetson"."""
    from deepfusionnet.runtime.measure.jetson import NOT_A_JETSON, PowerSampler, energy_per_frame

    if not PowerSampler.available():
        row.detail["energy_mj_per_frame"] = NOT_A_JETSON
        return
    rgb = _decode(png)
    frames = max(cfg.runs, round(2000 / max(row.p50_ms or 1.0, 1.0)))
    row.detail.update(energy_per_frame(lambda: runner.run(rgb), frames, PowerSampler()))


def bench_group(model: str, size: tuple[int, int], members: list[tuple], cfg: Settings,
                quality_done: dict) -> list[Row]:
    """Every (backend, precision) of one (model, size): loaded and warmed, then timed round-robin.

    A member ``(backend, precision, artifacts)`` reads its graphs from its own folder (recorded as
    ``detail["artifacts"]``), so two graphs of one network at one precision (say a post-training and a
    quantization-aware INT8 export) are timed in the same rounds."""
    w, h = size
    png = cv2.imencode(".png", synthetic_frame(size)[..., ::-1])[1].tobytes()
    rows = [Row(model, m[0], m[1], f"{w}x{h}", runs=0) for m in members]
    active: list[tuple[Row, Runner, list]] = []
    for row, m in zip(rows, members):
        rss0 = rss_mb()
        runner = _open_row(row, model, size, cfg, m[2] if len(m) > 2 else None)
        if runner is None or not _warm_up(row, runner, png, cfg.warmup, rss0):
            continue
        active.append((row, runner, []))
        cfg.log(f"loaded {model} {row.backend} {row.precision} {w}x{h} (load {row.load_s:.2f} s, "
                f"first run {row.first_run_ms:.0f} ms)")
    _time_round_robin(active, png, cfg, f"{model} {w}x{h}")
    for row, runner, samples in active:
        fill_timings(row, samples)
        _floor_fraction(row, cfg.floor)
        if cfg.quality_pairs:
            _score(row, runner, cfg, quality_done)
        _energy(row, runner, png, cfg)
        runner.close()
    speedups(rows)
    return rows


def bench(models: list[str], backends: list[str], precisions: list[str], sizes: list[tuple[int, int]],
          runs: int = 10, warmup: int = 1, threads: int | None = None, artifacts=None,
          quality_pairs: list[tuple[Path, Path]] | None = None, cache_dir: str | None = None,
          skip=None, log=None, device: str | None = None, floor: str = "measure") -> dict:
    """Run the grid and return ``{"rows": [...], "machine": {...}, "floor": {...}, "settings": {...}}``.

    ``skip(model, backend, precision, size) -> str | None`` may drop a row with a reason (kept in the
    output); ``log(str)`` receives progress lines. ``floor``: ``measure`` the machine's matmul floor
    first (a few seconds), reuse the ``cached`` one of this machine, or ``off``.
    """
    check_grid(backends, precisions, runs)
    if floor not in ("measure", "cached", "off"):
        raise DFNError(f"unknown floor mode {floor!r}; choose from: measure, cached, off")
    cfg = Settings(runs, warmup, threads, artifacts, quality_pairs, cache_dir, skip, device,
                   log or (lambda s: None))
    if floor != "off":
        cfg.log("floor: matmul GFLOP/s per precision" + (" (cached if there)" if floor == "cached" else ""))
        cfg.floor = machine_floor(refresh=floor == "measure")
    groups: dict[tuple, list] = {}
    for m, b, p, s in expand_rows(models, backends, precisions, sizes):
        groups.setdefault((m, s), []).append((b, p))
    rows: list[Row] = []
    quality_done: dict[tuple, dict] = {}
    for (model, size), members in groups.items():
        rows.extend(bench_group(model, size, members, cfg, quality_done))
    quality_deltas(rows)
    from deepfusionnet.runtime.measure.jetson import clock_warning, jetson_facts

    jetson = jetson_facts()
    if warning := clock_warning(jetson):
        cfg.log(warning)
    return {"rows": [r.to_json() for r in rows], "machine": {**machine_info(), "jetson_facts": jetson},
            "floor": cfg.floor,
            "settings": {"runs": runs, "warmup": warmup, "threads": threads, "torch_device": device or "cpu",
                         "quality_images": len(quality_pairs) if quality_pairs else 0,
                         "timing": "round-robin within each (model, size) group; end to end = decode+pre+infer+post"}}
