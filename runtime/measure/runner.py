"""One loaded benchmark row: each stage's backend inside the :class:`~deepfusionnet.runtime.enhancer.Chain`
that ``dfn enhance`` runs, with the inference time of every backend call summed apart."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from deepfusionnet.runtime.artifacts import Artifact, resolve
from deepfusionnet.runtime.backends.base import Backend, load_backend
from deepfusionnet.runtime.enhancer import Chain, Enhancer
from deepfusionnet.runtime.measure.auto import choose_with_options
from deepfusionnet.runtime.measure.plan import ModelSpec, plan_stage
from deepfusionnet.runtime.processing import to_image, to_tensor

WHOLE_FRAME = 1 << 30  # a tile no frame reaches: bench runs frames whole (dfn enhance --tile 0)


class TimedBackend:
    """A backend whose ``infer`` calls are timed (``seconds``, summed); everything else passes through."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.seconds = 0.0

    def __getattr__(self, name: str):  # name, inputs, outputs, providers, execution_precision ...
        return getattr(self.backend, name)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        try:
            return self.backend.infer(feed)
        finally:
            self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.backend.close()


class Runner:
    """The stages' backends in a :class:`Chain` (the enhancer, then the SR model; ``fast``: the
    enhancer at reduced size), timed as decode / pre (to tensor) / infer / post (the rest)."""

    def __init__(self, spec: ModelSpec, stages: list[tuple[Backend, Artifact]]) -> None:
        self.spec = spec
        self.timed = [TimedBackend(be) for be, _ in stages]
        self.stages = [(t, art) for t, (_, art) in zip(self.timed, stages)]
        enhancers = [Enhancer(t, art, tile=WHOLE_FRAME) for t, art in self.stages]
        self.chain = Chain(enhancers[0], enhancers[1] if len(enhancers) > 1 else None, fast=spec.fast)

    @property
    def scale(self) -> int:
        return self.chain.scale

    def stage_inputs(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Each stage's input (width, height) for a frame of ``size``, as :func:`open_runner` plans them."""
        w, h = (size[0] // 2, size[1] // 2) if self.spec.fast else size
        out = []
        for _, art in self.stages:
            out.append((w, h))
            w, h = w * art.scale, h * art.scale
        return out

    def run(self, rgb: np.ndarray, times: dict | None = None) -> np.ndarray:
        """uint8 RGB -> uint8 RGB through every stage; adds ``pre``/``infer``/``post`` seconds to
        ``times``."""
        t = times if times is not None else {}
        t0 = time.perf_counter()
        x = to_tensor(rgb)
        t1 = time.perf_counter()
        before = sum(b.seconds for b in self.timed)
        out = to_image(self.chain.run_tensor(x))
        t2 = time.perf_counter()
        infer = sum(b.seconds for b in self.timed) - before
        t["pre"] = t.get("pre", 0.0) + t1 - t0
        t["infer"] = t.get("infer", 0.0) + infer
        t["post"] = t.get("post", 0.0) + (t2 - t1) - infer  # padding, cropping, glue between stages, uint8
        return out

    def close(self) -> None:
        self.chain.close()


def _plan_auto(stage: str, size, artifacts, detail: dict) -> tuple[str, Path, dict, Artifact]:
    choice = choose_with_options(stage, size, artifacts=artifacts)
    path, opts = Path(choice.path), dict(choice.options)
    detail["stages"].append({"stage": stage, "picked": choice.label, "path": str(path), "options": opts,
                             "cached": choice.cached})
    return choice.backend, path, opts, resolve(path)


def open_runner(spec: ModelSpec, backend: str, precision: str, size: tuple[int, int] | None,
                artifacts=None, threads: int | None = None, cache_dir: str | None = None,
                device: str | None = None) -> tuple[Runner, dict]:
    """Load every stage of ``spec`` for one row; returns the runner and what was picked/loaded."""
    loaded: list[tuple[Backend, Artifact]] = []
    detail: dict = {"stages": []}
    in_size = size
    if in_size and spec.fast:
        in_size = (in_size[0] // 2, in_size[1] // 2)
    try:
        for stage in spec.stages:
            if backend == "auto":
                name, path, opts, art = _plan_auto(stage, in_size, artifacts, detail)
            else:
                name, path, opts, art = plan_stage(stage, backend, precision, artifacts, threads, cache_dir,
                                                   device)
                detail["stages"].append({"stage": stage, "path": str(path), "options": opts})
            loaded.append((load_backend(name, path, **opts), art))
            if in_size:
                in_size = (in_size[0] * art.scale, in_size[1] * art.scale)
        return Runner(spec, loaded), detail
    except BaseException:
        for be, _ in loaded:
            be.close()
        raise
