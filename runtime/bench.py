"""The harness behind ``dfn bench``: latency (and optionally eval15 quality) per model x backend x precision x size.

Method, so the numbers mean the same on every machine:

* Every row of one (model, size) group is loaded first, warmed up, and then timed **round-robin**
  (run 1 of every row, then run 2 of every row, ...). On a shared or throttling machine the load drifts;
  interleaving makes the speed ratios between rows fair even when absolute times are not.
* One timed run is the whole frame path: PNG decode -> pre (to tensor, pad; half-size resize for
  ``half:`` pipelines) -> inference (every stage) -> post (crop, between-stage glue, to uint8). Each
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
enhancer then the 2x SR); ``half:A+B`` runs ``A`` on a frame downscaled 2x and lets ``B`` bring it
back to full size.

Torch-free: torch rows go through the registered torch backend, which is only imported when asked for.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from deepfusionnet.errors import DFNError, native_reason
from deepfusionnet.runtime.artifacts import SHIPPED, Artifact, resolve
from deepfusionnet.runtime.backends.base import Backend, load_backend
from deepfusionnet.runtime.enhancer import fixed_input_size, network_fn
from deepfusionnet.runtime.machine import isa_features, machine_info
from deepfusionnet.runtime.processing import crop, pad_to_multiple, to_image, to_tensor

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Backends a row may name. "ort-cuda" and "tensorrt" are ONNX Runtime's CUDA / TensorRT execution
# providers (same ONNX artifacts, precision baked into the graph); "auto" is runtime.auto's choice.
BENCH_BACKENDS = ("torch", "onnxruntime", "openvino", "ort-cuda", "tensorrt", "auto")
NOT_MEASURED = "not measured"


class Unsupported(Exception):
    """This (backend, precision) cannot run here; the row is kept with the reason as its status."""


@dataclass(frozen=True)
class Pipeline:
    """A parsed model spec: the stage names in order, and whether the input is halved first."""

    spec: str
    stages: tuple[str, ...]
    half: bool = False


def parse_model_spec(spec: str) -> Pipeline:
    text = spec.strip()
    half = text.startswith("half:")
    body = text.removeprefix("half:")
    stages = tuple(s.strip() for s in body.split("+") if s.strip())
    if not stages:
        raise DFNError(f"empty model spec {spec!r}")
    if half and len(stages) < 2:
        raise DFNError(f"{spec!r}: half: needs an enhancer and an SR model, e.g. half:deepfusionnet+deepfusionnet-sr")
    return Pipeline(text, stages, half)


def parse_size(text: str) -> tuple[int, int]:
    """``"600x400"`` -> ``(600, 400)`` (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DFNError(f"bad size {text!r}; write WIDTHxHEIGHT, e.g. 600x400") from None
    if w < 8 or h < 8:
        raise DFNError(f"bad size {text!r}: at least 8x8")
    return w, h


def variant_path(base: Path, precision: str) -> Path:
    """``x.onnx`` -> ``x.fp16.onnx`` / ``x.int8.onnx`` (the names ``dfn export --precision`` writes)."""
    if precision == "fp32":
        return base
    return base.with_name(f"{base.name[: -len(base.suffix)]}.{precision}{base.suffix}")


def base_artifact(stage: str, artifacts: str | Path | None = None) -> Artifact:
    """The FP32 ONNX for a stage: ``artifacts/<name>.onnx`` when given and present, else ``resolve``."""
    if artifacts is not None and "/" not in stage and not stage.endswith(".onnx"):
        candidate = Path(artifacts) / f"{stage}.onnx"
        if candidate.is_file():
            art = resolve(candidate)
            if stage in SHIPPED:  # a bare export may lack metadata; the name says what it is
                scale, multiple, _ = SHIPPED[stage]
                art = replace(art, model=stage, scale=scale, multiple=multiple)
            return art
    return resolve(stage)


def _cuda_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return ort.get_available_providers()
    except ImportError:
        return []


def plan_stage(stage: str, backend: str, precision: str, artifacts=None, threads: int | None = None,
               cache_dir: str | None = None, device: str | None = None) -> tuple[str, Path, dict, Artifact]:
    """``(backend to load, path, options, artifact)`` for one stage, or :class:`Unsupported` with why;
    ``device`` places the torch rows (the other backends choose their own)."""
    if backend == "torch":
        if precision != "fp32":
            raise Unsupported("PyTorch rows are the FP32 eager reference only")
        art = resolve(stage, "weights") if not str(stage).endswith(".onnx") else None
        if art is None or art.kind != "weights":
            raise Unsupported(f"{stage}: no PyTorch weights for an ONNX file")
        options = {**({"threads": threads} if threads else {}), **({"device": device} if device else {})}
        return "torch", art.path, options, art
    base = base_artifact(stage, artifacts)
    if base.kind != "onnx":
        raise Unsupported(f"{base.path.name}: {backend} rows need an ONNX artifact")
    if backend == "onnxruntime":
        if precision == "bf16":
            raise Unsupported("ONNX Runtime CPU has no BF16 path")
        path = variant_path(base.path, precision)
        if not path.is_file():
            raise Unsupported(f"no {path.name} (make it with: dfn export {stage} --precision {precision})")
        return "onnxruntime", path, {"providers": ["CPUExecutionProvider"], **({"threads": threads} if threads else {})}, base
    if backend == "openvino":
        opts: dict = {"threads": threads} if threads else {}
        if cache_dir:
            opts["cache_dir"] = cache_dir
        isa = set(isa_features())
        if precision in ("fp32", "bf16", "fp16"):
            if precision == "bf16" and not isa & {"avx512_bf16", "amx_bf16"}:
                raise Unsupported("this CPU has no BF16 instructions (AVX512_BF16/AMX)")
            if precision == "fp16" and not isa & {"avx512_fp16", "amx_fp16", "asimdhp"}:
                raise Unsupported("this CPU has no FP16 arithmetic (AVX512_FP16/AMX-FP16/Arm FP16)")
            return "openvino", base.path, {**opts, "precision": {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]}, base
        path = variant_path(base.path, precision)
        if not path.is_file():
            raise Unsupported(f"no {path.name} (make it with: dfn export {stage} --precision {precision})")
        return "openvino", path, opts, base  # INT8 Q/DQ graph; the rest runs at the plugin's default precision
    if backend in ("ort-cuda", "tensorrt"):
        provider = "CUDAExecutionProvider" if backend == "ort-cuda" else "TensorrtExecutionProvider"
        if provider not in _cuda_providers():
            raise Unsupported(f"{NOT_MEASURED} (no {provider} on this machine)")
        if precision == "bf16":
            raise Unsupported("BF16 rows are CPU-only here")
        path = variant_path(base.path, precision)
        if not path.is_file():
            raise Unsupported(f"no {path.name} (make it with: dfn export {stage} --precision {precision})")
        popts = {}
        if backend == "tensorrt":
            cache = str(Path(cache_dir or Path.home() / ".cache" / "deepfusionnet") / "trt")
            popts = {provider: {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}}
        return "onnxruntime", path, {"providers": [provider, "CPUExecutionProvider"], "provider_options": popts}, base
    raise DFNError(f"unknown backend {backend!r}; choose from: {', '.join(BENCH_BACKENDS)}")


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Runner:
    """One loaded row: the stages' backends plus the frame path around them."""

    def __init__(self, pipeline: Pipeline, stages: list[tuple[Backend, Artifact]]) -> None:
        self.pipeline = pipeline
        self.stages = stages
        # a fixed-size graph pads (or tiles) each frame to its size: network_fn's path, built once
        self.fixed = [network_fn(be, art.scale, art.multiple) if fixed_input_size(be) else None
                      for be, art in stages]

    @property
    def scale(self) -> float:
        s = 1.0
        for _, art in self.stages:
            s *= art.scale
        return s / 2 if self.pipeline.half else s

    def run(self, rgb: np.ndarray, times: dict | None = None) -> np.ndarray:
        """uint8 RGB -> uint8 RGB through every stage; adds ``pre``/``infer``/``post`` seconds to ``times``."""
        t = times if times is not None else {}
        t0 = time.perf_counter()
        if self.pipeline.half:
            rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        x = to_tensor(rgb)
        t1 = time.perf_counter()
        t["pre"] = t.get("pre", 0.0) + t1 - t0
        for i, (backend, art) in enumerate(self.stages):
            if self.fixed[i] is not None:  # padding or tiling to the graph's size counts as inference
                t1 = time.perf_counter()
                x = self.fixed[i](x)
                t["infer"] = t.get("infer", 0.0) + time.perf_counter() - t1
                continue
            t0 = time.perf_counter()
            xp, size = pad_to_multiple(x, art.multiple)
            info = backend.inputs[0]
            dtype = np.float16 if info.dtype == "float16" else np.float32
            feed = {info.name: np.ascontiguousarray(xp, dtype=dtype)}
            t1 = time.perf_counter()
            y = backend.infer(feed)[backend.outputs[0].name]
            t2 = time.perf_counter()
            x = crop(np.asarray(y, np.float32), size, art.scale)
            t3 = time.perf_counter()
            t["infer"] = t.get("infer", 0.0) + t2 - t1
            t["pre" if i == 0 else "post"] = t.get("pre" if i == 0 else "post", 0.0) + t1 - t0
            t["post"] = t.get("post", 0.0) + t3 - t2
        t0 = time.perf_counter()
        out = to_image(x)
        t["post"] = t.get("post", 0.0) + time.perf_counter() - t0
        return out

    def close(self) -> None:
        for backend, _ in self.stages:
            backend.close()


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
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def open_runner(pipeline: Pipeline, backend: str, precision: str, size: tuple[int, int] | None,
                artifacts=None, threads: int | None = None, cache_dir: str | None = None,
                device: str | None = None) -> tuple[Runner, dict]:
    """Load every stage of ``pipeline`` for one row; returns the runner and what was picked/loaded."""
    loaded: list[tuple[Backend, Artifact]] = []
    detail: dict = {"stages": []}
    in_size = size
    if in_size and pipeline.half:
        in_size = (in_size[0] // 2, in_size[1] // 2)
    try:
        for stage in pipeline.stages:
            if backend == "auto":
                from deepfusionnet.runtime.auto import choose_with_options

                choice = choose_with_options(stage, in_size, artifacts=artifacts)
                name, path, opts = choice.backend, Path(choice.path), dict(choice.options)
                art = resolve(path)
                detail["stages"].append({"stage": stage, "picked": choice.label, "path": str(path),
                                         "options": opts, "cached": choice.cached})
            else:
                name, path, opts, art = plan_stage(stage, backend, precision, artifacts, threads, cache_dir,
                                                   device)
                detail["stages"].append({"stage": stage, "path": str(path), "options": {k: v for k, v in opts.items()
                                                                                        if k != "provider_options"}})
            be = load_backend(name, path, **opts)
            if name == "torch":
                art = Artifact(art.path, "weights", art.model, art.scale, art.multiple)
            loaded.append((be, art))
            if in_size:
                in_size = (in_size[0] * art.scale, in_size[1] * art.scale)
    except BaseException:
        for be, _ in loaded:
            be.close()
        raise
    return Runner(pipeline, loaded), detail


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"p50": float(np.median(a)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean())}


def synthetic_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A dark, textured RGB frame of ``(width, height)``: a real night sample resized when one ships, else noise."""
    w, h = size
    from deepfusionnet.runtime.samples import sample_frame

    sample = sample_frame()
    if sample.is_file():
        img = cv2.imread(str(sample), cv2.IMREAD_COLOR)
        if img is not None:
            return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1])
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60, (h, w, 3), dtype=np.uint8)


def quality(runner: Runner, pairs: list[tuple[Path, Path]]) -> dict:
    """Mean PSNR/SSIM of ``runner`` over ``(low, high)`` pairs.

    An SR-only pipeline is scored like ``dfn eval`` scores SR (degraded ground truth in, sharp ground
    truth out); any other pipeline takes the low-light image, and an output larger than the ground
    truth (enhancer + SR chain) is downscaled to it (INTER_AREA) before scoring.
    """
    from deepfusionnet.runtime.evaluate import prepare_pair
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.metrics import psnr, ssim

    sr_only = len(runner.stages) == 1 and runner.stages[0][1].scale == 2
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


def expand_rows(models: list[str], backends: list[str], precisions: list[str], sizes: list[tuple[int, int]]):
    """The (model, backend, precision, size) grid; ``auto`` gets one row per model and size."""
    for m in models:
        for s in sizes:
            for b in backends:
                for p in (["auto"] if b == "auto" else precisions):
                    yield m, b, p, s


def bench(models: list[str], backends: list[str], precisions: list[str], sizes: list[tuple[int, int]],
          runs: int = 10, warmup: int = 1, threads: int | None = None, artifacts=None,
          quality_pairs: list[tuple[Path, Path]] | None = None, cache_dir: str | None = None,
          skip=None, log=None, device: str | None = None) -> dict:
    """Run the grid and return ``{"rows": [...], "machine": {...}, "settings": {...}}``.

    ``skip(model, backend, precision, size) -> str | None`` may drop a row with a reason (kept in the
    output); ``log(str)`` receives progress lines.
    """
    log = log or (lambda s: None)
    for b in backends:
        if b not in BENCH_BACKENDS:
            raise DFNError(f"unknown backend {b!r}; choose from: {', '.join(BENCH_BACKENDS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise DFNError(f"unknown precision {p!r}; choose from: {', '.join(PRECISIONS)}")
    if runs < 1:
        raise DFNError("--runs must be at least 1")
    rows: list[Row] = []
    quality_done: dict[tuple, dict] = {}
    grid = list(expand_rows(models, backends, precisions, sizes))
    groups: dict[tuple, list] = {}
    for m, b, p, s in grid:
        groups.setdefault((m, s), []).append((b, p))
    for (model, size), members in groups.items():
        pipeline = parse_model_spec(model)
        w, h = size
        png = cv2.imencode(".png", synthetic_frame(size)[..., ::-1])[1].tobytes()
        active: list[tuple[Row, Runner, list]] = []
        group_rows: list[Row] = []
        for backend, precision in members:
            row = Row(model, backend, precision, f"{w}x{h}", runs=0)
            group_rows.append(row)
            reason = skip(model, backend, precision, size) if skip else None
            if reason:
                row.status = reason
                continue
            rss0 = _rss_mb()
            t0 = time.perf_counter()
            try:
                runner, detail = open_runner(pipeline, backend, precision, size, artifacts, threads,
                                             cache_dir, device)
            except Unsupported as exc:
                row.status = str(exc) if str(exc).startswith(NOT_MEASURED) else f"skipped: {exc}"
                continue
            except DFNError as exc:
                row.status = f"failed: {exc}"
                continue
            row.load_s = time.perf_counter() - t0
            row.detail = detail
            if backend == "auto":
                row.picked = " + ".join(s["picked"] for s in detail["stages"])
                row.precision = "/".join(dict.fromkeys(s["picked"].split(" ", 1)[-1] for s in detail["stages"]))
            frame = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            try:
                t0 = time.perf_counter()
                runner.run(np.ascontiguousarray(frame))
                row.first_run_ms = (time.perf_counter() - t0) * 1000
                for _ in range(max(warmup - 1, 0)):
                    runner.run(np.ascontiguousarray(frame))
            except Exception as exc:  # a backend failing on this shape/precision is a row result, not a crash
                row.status = f"failed: {type(exc).__name__}: {native_reason(exc)}"
                runner.close()
                continue
            row.mem_mb = _rss_mb() - rss0
            row.peak_rss_mb = _peak_rss_mb()
            for be, _ in runner.stages:
                if hasattr(be, "execution_precision"):
                    row.detail["openvino_precision"] = be.execution_precision()
                if hasattr(be, "providers"):
                    row.detail["providers"] = list(be.providers)
            active.append((row, runner, []))
            log(f"loaded {model} {backend} {row.precision} {w}x{h} (load {row.load_s:.2f} s, "
                f"first run {row.first_run_ms:.0f} ms)")
        # Round-robin: every row's i-th run happens close in time to every other row's i-th run.
        for i in range(runs):
            for row, runner, samples in active:
                t = {}
                t0 = time.perf_counter()
                rgb = np.ascontiguousarray(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
                t["decode"] = time.perf_counter() - t0
                runner.run(rgb, t)
                samples.append(t)
            log(f"{model} {w}x{h}: run {i + 1}/{runs}")
        for row, runner, samples in active:
            e2e = _stats([1000 * sum(t.values()) for t in samples])
            inf = _stats([1000 * t["infer"] for t in samples])
            row.runs = len(samples)
            row.p50_ms, row.p90_ms, row.p99_ms, row.mean_ms = e2e["p50"], e2e["p90"], e2e["p99"], e2e["mean"]
            row.fps = 1000 / e2e["mean"]
            row.infer_p50_ms, row.infer_mean_ms = inf["p50"], inf["mean"]
            for part in ("decode", "pre", "post"):
                setattr(row, f"{part}_ms", float(np.median([1000 * t.get(part, 0.0) for t in samples])))
            if quality_pairs:
                key = (model, row.backend, row.precision if row.backend != "auto" else row.picked)
                if key not in quality_done:
                    log(f"quality: {model} {row.backend} {row.precision} on {len(quality_pairs)} images")
                    quality_done[key] = quality(runner, quality_pairs)
                q = quality_done[key]
                row.psnr_eval15, row.ssim_eval15, row.quality_images = q["psnr"], q["ssim"], q["images"]
            runner.close()
        ref = next((r for r in group_rows if r.backend == "torch" and r.precision == "fp32" and r.p50_ms), None)
        for r in group_rows:
            if ref and r.p50_ms:
                r.speedup_vs_torch = ref.p50_ms / r.p50_ms
                r.infer_speedup_vs_torch = ref.infer_p50_ms / r.infer_p50_ms
        rows.extend(group_rows)
    _quality_deltas(rows)
    return {"rows": [r.to_json() for r in rows], "machine": machine_info(),
            "settings": {"runs": runs, "warmup": warmup, "threads": threads, "torch_device": device or "cpu",
                         "quality_images": len(quality_pairs) if quality_pairs else 0,
                         "timing": "round-robin within each (model, size) group; end to end = decode+pre+infer+post"}}


def _quality_deltas(rows: list[Row]) -> None:
    for r in rows:
        if r.psnr_eval15 is None:
            continue
        refs = [x for x in rows if x.model == r.model and x.precision == "fp32" and x.psnr_eval15 is not None]
        ref = next((x for x in refs if x.backend == "torch"), None) or next(
            (x for x in refs if x.backend == "onnxruntime"), None)
        if ref is not None:
            r.psnr_delta_db = r.psnr_eval15 - ref.psnr_eval15


def fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown_table(result: dict) -> str:
    """The rows as a Markdown table (not-measured and skipped rows keep their reason)."""
    head = ("| model | size | backend | precision | p50 ms | p90 ms | p99 ms | infer p50 ms | fps | × eager FP32 "
            "| eval15 PSNR | Δ dB vs FP32 | load s | mem MB | status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        prec = r["precision"] if r["backend"] != "auto" else f"{r['precision']} ({r['picked']})"
        status = "ok" if r["status"] == "ok" else r["status"]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['backend']} | {prec} | {fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} "
            f"| {fmt(r['p99_ms'])} | {fmt(r['infer_p50_ms'])} | {fmt(r['fps'], 2)} | {fmt(r['speedup_vs_torch'], 2)} "
            f"| {fmt(r['psnr_eval15'], 2)} | {fmt(r['psnr_delta_db'], 3)} | {fmt(r['load_s'], 2)} "
            f"| {fmt(r['mem_mb'], 0)} | {status} |")
    return "\n".join(lines) + "\n"


def machine_markdown(machine: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    return (f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, ISA: {' '.join(machine.get('isa') or [])}; "
            f"GPU: {', '.join(machine['gpu']) if machine.get('gpu') else 'none'}; Jetson: {machine.get('jetson') or 'no'}; "
            f"{machine.get('os')}; Python {machine.get('python')}; {libs}.\n")


def plot_frontier(result: dict, path: str | Path, size: str | None = None) -> Path:
    """Latency (end-to-end p50) against eval15 PSNR, one panel per model spec (their scores differ by
    dB, the precisions within one by hundredths), one marker per row and a dashed quality/speed frontier."""
    from deepfusionnet.errors import require

    matplotlib = require("matplotlib", "train", "matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["p50_ms"] and r["psnr_eval15"] is not None
            and (size is None or r["size"] == size)]
    if not rows:
        raise DFNError("nothing to plot: no row has both a latency and an eval15 PSNR (pass --quality)")
    models = list(dict.fromkeys(r["model"] for r in rows))
    ncols = min(2, len(models))
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 3.6 * nrows), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(models):
        ax = axes[i // ncols][i % ncols]
        pts = sorted((r for r in rows if r["model"] == m), key=lambda r: r["p50_ms"])
        ax.scatter([r["p50_ms"] for r in pts], [r["psnr_eval15"] for r in pts], color=cmap(i % 10), s=36)
        for k, r in enumerate(pts):  # neighbours in latency get labels at different heights
            label = f"{r['backend']} {r['precision']}" if r["backend"] != "auto" else f"auto: {r['precision']}"
            ax.annotate(label, (r["p50_ms"], r["psnr_eval15"]), fontsize=6.5, xytext=(3, 4 + 9 * (k % 4)),
                        textcoords="offset points", arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "0.6"})
        frontier, best = [], -1e9
        for r in pts:
            if r["psnr_eval15"] > best:
                frontier.append(r)
                best = r["psnr_eval15"]
        ax.plot([r["p50_ms"] for r in frontier], [r["psnr_eval15"] for r in frontier], "--", color=cmap(i % 10),
                lw=0.8)
        lo, hi = min(r["psnr_eval15"] for r in pts), max(r["psnr_eval15"] for r in pts)
        pad = max(0.02, (hi - lo) * 0.3)
        ax.set_ylim(lo - pad, hi + 2.5 * pad)  # head room for the stacked labels
        ax.set_xscale("log")
        ax.set_title(m, fontsize=8)
        ax.set_xlabel(f"end-to-end p50, ms (log){' at ' + size if size else ''}", fontsize=7)
        ax.set_ylabel("eval15 PSNR, dB", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    for j in range(len(models), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    cpu = result.get("machine", {}).get("cpu", "")
    fig.suptitle(f"Quality vs speed — {cpu}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
