"""What one benchmark row loads: the model spec, the artifact of each stage and the backend's options.

Everything backend-specific comes from the registry (:data:`deepfusionnet.runtime.backends.base.BACKENDS`):
which artifact kinds a backend loads, the precisions it selects by an option (OpenVINO's hint) or runs
from a graph beside the FP32 one (``X.int8.onnx``), the CPU features a precision needs, and why a
precision is not offered at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import SHIPPED, Artifact, resolve
from deepfusionnet.runtime.backends.base import BACKENDS, BackendEntry, entry, shipped_kind, unavailable
from deepfusionnet.runtime.measure.machine import isa_features

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
NOT_MEASURED = "not measured"
FAST_PREFIXES = ("fast:", "half:")  # "half:" is the older spelling of "fast:" (dfn enhance --fast)


class Unsupported(Exception):
    """This (backend, precision) cannot run here; the row is kept with the reason as its status."""


def bench_backends() -> tuple[str, ...]:
    """Backends a row may name: every registered backend, and ``auto`` (runtime.measure.auto's choice)."""
    return (*BACKENDS, "auto")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: the stage names in order (an enhancer, then optionally an SR model), and
    ``fast``: the enhancer runs on the frame shrunk by the SR scale, as ``dfn enhance --fast``."""

    spec: str
    stages: tuple[str, ...]
    fast: bool = False


def parse_model_spec(spec: str) -> ModelSpec:
    """``A``, ``A+B`` (A then B) or ``fast:A+B`` (A at reduced size, B back to full size)."""
    text = spec.strip()
    prefix = next((p for p in FAST_PREFIXES if text.startswith(p)), "")
    stages = tuple(s.strip() for s in text.removeprefix(prefix).split("+") if s.strip())
    if not stages:
        raise DFNError(f"empty model spec {spec!r}")
    if len(stages) > 2:
        raise DFNError(f"{spec!r}: a spec chains at most two models, an enhancer and an SR model")
    if prefix and len(stages) < 2:
        raise DFNError(f"{spec!r}: {prefix} needs an enhancer and an SR model, "
                       "e.g. fast:deepfusionnet+deepfusionnet-sr")
    return ModelSpec(text, stages, bool(prefix))


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


def _row_options(e: BackendEntry, threads: int | None, cache_dir: str | None, device: str | None) -> dict:
    opts = dict(e.row_options)
    if threads and e.threads:
        opts["threads"] = threads
    if device and e.device:
        opts["device"] = device
    if e.cache == "optional" and cache_dir:
        opts["cache_dir"] = cache_dir
    elif e.cache and e.cache != "optional":
        opts["cache_dir"] = str(Path(cache_dir or Path.home() / ".cache" / "deepfusionnet") / e.cache)
    return opts


def _check_precision(backend: str, e: BackendEntry, precision: str) -> None:
    if precision in e.precisions or precision in e.variants:
        return
    why = e.unsupported.get(precision) or e.unsupported.get("*")
    raise Unsupported(why or f"{backend} has no {precision} path")


def _stage_artifact(stage: str, backend: str, e: BackendEntry, artifacts) -> Artifact:
    art = base_artifact(stage, artifacts) if "onnx" in e.loads else resolve(stage, shipped_kind(backend))
    if art.kind not in e.loads:
        raise Unsupported(f"{art.path.name}: {backend} rows need a {' or '.join(e.loads)} artifact")
    return art


def plan_stage(stage: str, backend: str, precision: str, artifacts=None, threads: int | None = None,
               cache_dir: str | None = None, device: str | None = None) -> tuple[str, Path, dict, Artifact]:
    """``(backend to load, path, options, artifact)`` for one stage, or :class:`Unsupported` with why;
    ``device`` places the backends that take one (torch; the others choose their own)."""
    e = entry(backend)
    _check_precision(backend, e, precision)
    why = unavailable(backend)
    if why:
        raise Unsupported(f"{NOT_MEASURED} ({why})")
    art = _stage_artifact(stage, backend, e, artifacts)
    opts = _row_options(e, threads, cache_dir, device)
    if precision in e.precisions:
        features, reason = e.isa.get(precision, ((), ""))
        if features and not set(isa_features()) & set(features):
            raise Unsupported(reason)
        return backend, art.path, {**opts, **e.precisions[precision]}, art
    path = variant_path(art.path, precision)
    if not path.is_file():
        how = f" (make it with: dfn export {stage} --precision {precision})" if art.kind == "onnx" else ""
        raise Unsupported(f"no {path.name}{how}")
    return backend, path, opts, art  # precision in the graph; the rest at the backend's default
