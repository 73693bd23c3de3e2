"""Image in, image out: one backend plus the shared pre/post-processing (pad, tile, crop)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import Artifact, resolve
from deepfusionnet.runtime.backends.base import Backend, default_backend, load_backend, shipped_kind
from deepfusionnet.runtime.processing import (crop, pad_to_multiple, pad_to_size, require_finite,
                                              resize_tensor, run_tiled, to_image, to_tensor)
from deepfusionnet.runtime.tile_context import TileContext, context_frame, context_input, load_tile_context
from deepfusionnet.runtime.gate import ExposureGate

# Frames above this many pixels on a side run in tiles (bounded memory on 4-8 GB Jetsons; a whole
# 1920x1080 frame peaked at 0.7 GiB on the CPU).
DEFAULT_TILE = 2048
# A tiled frame's global context is computed on the frame downscaled to fit this (or the tile, if larger):
# up to it the tiles get the whole frame's exact context. The attention's pooled maxima do not survive
# downscaling: a context from a 1024 px copy of a 1920x1080 LOL frame put its tiles 29 dB from the whole
# frame (49-54 dB on real night photos), so the default covers 1080p and 2K frames exactly.
CONTEXT_SIDE = 2048
TTA_CHOICES = (1, 4, 8)


def check_tta(n: int) -> None:
    if n not in TTA_CHOICES:
        raise DFNError(f"--tta must be one of {', '.join(map(str, TTA_CHOICES))}, not {n}")


def self_ensemble(fn, x: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``fn`` over ``n`` dihedral transforms of NCHW ``x``, each output transformed back: 4 = the
    identity and the three flips, 8 = those and their transposes. The geometric self-ensemble of
    super-resolution practice (EDSR's "x8"). On the enhancer it lifted the 40 held-out LOL training
    pairs by 0.15 dB (4) and 0.25 dB (8), but not eval15, where exposure dominates (docs/eval.md)."""
    acc = None
    for k in range(n):
        flip_h, flip_w, swap = bool(k & 1), bool(k & 2), bool(k & 4)
        t = x[..., ::-1, :] if flip_h else x
        t = t[..., ::-1] if flip_w else t
        t = np.swapaxes(t, -1, -2) if swap else t
        y = fn(np.ascontiguousarray(t))
        y = np.swapaxes(y, -1, -2) if swap else y
        y = y[..., ::-1] if flip_w else y
        y = y[..., ::-1, :] if flip_h else y
        acc = y.astype(np.float32) if acc is None else acc + y
    return acc / np.float32(n)


def fixed_input_size(backend: Backend) -> tuple[int, int] | None:
    """``(H, W)`` when ``backend``'s input has a fixed spatial size (a static-shape export), else None."""
    shape = backend.inputs[0].shape
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def _dtype(info) -> type:
    """The numpy type a backend's input or output takes: float16 graphs keep half-precision IO."""
    return np.float16 if info.dtype == "float16" else np.float32


def graph_fn(backend: Backend, scale: int, path=None, extra: dict | None = None
             ) -> Callable[[np.ndarray], np.ndarray]:
    """float32 NCHW -> ``backend``'s first output as float32 NCHW, checked to be ``scale`` x larger and
    finite; ``extra`` feeds the backend's further inputs (a tile graph's context)."""
    name_in, name_out = backend.inputs[0].name, backend.outputs[0].name
    dtype = _dtype(backend.inputs[0])
    where = path if path is not None else backend.name

    def fn(t: np.ndarray) -> np.ndarray:
        feed = {name_in: np.ascontiguousarray(t, dtype=dtype), **(extra or {})}
        y = np.asarray(backend.infer(feed)[name_out], np.float32)
        if y.shape[-2:] != (t.shape[-2] * scale, t.shape[-1] * scale):
            # A wrong scale would otherwise be cropped away silently.
            raise DFNError(f"{where}: output {y.shape[-2]}x{y.shape[-1]} for an input of "
                           f"{t.shape[-2]}x{t.shape[-1]}, expected scale {scale} (set \"scale\" in "
                           f"the model's .json sidecar)")
        require_finite(y, where, backend.name)
        return y

    return fn


def _padded_to(fn: Callable[[np.ndarray], np.ndarray], fixed: tuple[int, int] | None, scale: int,
               multiple: int) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` on a frame padded to the multiple, or to exactly ``fixed`` (a fixed-size graph), cropped
    back."""
    if fixed is None:
        def run(t: np.ndarray) -> np.ndarray:
            tp, size = pad_to_multiple(t, multiple)
            return crop(fn(tp), size, scale)
        return run

    def run_fixed(t: np.ndarray) -> np.ndarray:
        h, w = t.shape[-2:]
        return fn(pad_to_size(t, fixed))[..., : h * scale, : w * scale]
    return run_fixed


def _within(backend: Backend, hw: tuple[int, int]) -> tuple[int, int]:
    """``hw`` capped at the largest input a backend with a shape range takes (a TensorRT engine's profile)."""
    if not hasattr(backend, "shape_range"):
        return hw
    hi = backend.shape_range(backend.inputs[0].name)[2]
    return (min(hw[0], int(hi[-2])), min(hw[1], int(hi[-1]))) if len(hi) == 4 else hw


def _context_of(context: TileContext, x: np.ndarray, side: int, multiple: int) -> np.ndarray:
    """The tile graph's context input for frame ``x``: the context graph on ``x`` downscaled to fit ``side``
    (or the context graph's fixed size)."""
    be = context.context
    fixed = fixed_input_size(be)
    small = context_frame(x, fixed or _within(be, (side, side)))
    small = pad_to_multiple(small, multiple)[0] if fixed is None else pad_to_size(small, fixed)
    out = be.infer({be.inputs[0].name: np.ascontiguousarray(small, dtype=_dtype(be.inputs[0]))})
    return np.ascontiguousarray(out[be.outputs[0].name], dtype=_dtype(context.tile.inputs[1]))


def network_fn(backend: Backend, scale: int, multiple: int, tile: int = DEFAULT_TILE, overlap: int = 32,
               path=None, context: TileContext | Callable[[], TileContext | None] | None = None,
               context_side: int = CONTEXT_SIDE) -> Callable[[np.ndarray], np.ndarray]:
    """float32 NCHW in [0, 1] of any H, W -> the network's float32 output, ``scale`` x larger.

    The one place a frame meets a graph's input shape, for every caller (enhance, eval, parity, auto,
    bench): frames are padded to the input multiple, or to exactly the input size of a fixed-size graph
    (larger ones run in tiles of that size), and the output is cropped back. With a ``context``
    (:mod:`.tile_context`, or a function loading it when first needed) the tiles of a frame share its
    global context and agree with the whole frame; the context is computed on the frame downscaled to fit
    ``max(tile, context_side)`` px (a TensorRT engine's largest input at most).
    """
    fixed = fixed_input_size(backend)
    side = max(tile - tile % multiple, multiple) if fixed is None else min(tile, *fixed)  # see aligned()
    if fixed is None:  # an engine with a shape range: tiles it takes, not its own tiling without context
        side = min(side, *(d - d % multiple for d in _within(backend, (side, side))))
    plain = _padded_to(graph_fn(backend, scale, path), fixed, scale, multiple)

    def run(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        if (h <= fixed[0] and w <= fixed[1]) if fixed else (h <= side and w <= side):
            return plain(x)
        shared = context() if callable(context) else context
        if shared is None:
            return aligned(plain, x, side, fixed)
        ctx = _context_of(shared, x, max(side, context_side), multiple)
        tiles = graph_fn(shared.tile, scale, path, {context_input(shared.tile): ctx})
        tile_fixed = fixed_input_size(shared.tile)
        tile_side = min(side, *_within(shared.tile, (side, side)))
        tile_side = tile_side - tile_side % multiple if tile_fixed is None else min(side, *tile_fixed)
        return aligned(_padded_to(tiles, tile_fixed, scale, multiple), x, tile_side, tile_fixed)

    def aligned(fn, x: np.ndarray, side: int, fixed_size) -> np.ndarray:
        """Tiles on the whole frame's grid: the frame is padded as a whole, and with tile and overlap
        multiples of the input multiple every tile starts on it, so the tiles' pooling windows are the whole
        frame's (misaligned 2x2 tiles of a 600x400 frame agreed at 43 dB, aligned ones at 58 dB)."""
        if fixed_size is not None:
            return run_tiled(fn, x, side, overlap, scale, 1)
        xp, size = pad_to_multiple(x, multiple)
        return crop(run_tiled(fn, xp, side, -(-overlap // multiple) * multiple, scale, 1), size, scale)

    return run


@dataclass
class Enhancer:
    """Runs one model on uint8 RGB frames of any size."""

    backend: Backend
    artifact: Artifact
    tile: int = DEFAULT_TILE
    overlap: int = 32
    tta: int = 1  # 1, 4 (flips) or 8 (flips and transposes): average of the outputs, tta x the work
    gate: ExposureGate | None = None  # keeps the input where it is already well exposed (runtime.gate)
    context: TileContext | None = None  # tiles share the frame's global context (runtime.tile_context)
    companions: Callable[[], TileContext | None] | None = None  # loads ``context`` on the first tiled frame
    context_side: int = CONTEXT_SIDE  # a tiled frame's context is computed at up to max(tile, this) px

    def __post_init__(self) -> None:
        check_tta(self.tta)

    @property
    def scale(self) -> int:
        return self.artifact.scale

    @property
    def task(self) -> str:
        return self.artifact.task

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW in [0, 1] (any H, W) -> float32 NCHW, ``scale`` x larger, exposure-calibrated
        over the whole frame when the model carries a calibration, then gated by the input's exposure."""
        y = self.run_network(x) if self.tta == 1 else self_ensemble(self.run_network, x, self.tta)
        if self.artifact.exposure is not None:
            y = self.artifact.exposure.apply(y)
        return self.gate.apply(x, y) if self.gate is not None else y

    def run_network(self, x: np.ndarray) -> np.ndarray:
        """:meth:`run_tensor` without the exposure calibration: the network's output, tiled as needed."""
        return network_fn(self.backend, self.scale, self.artifact.multiple, self.tile, self.overlap,
                          self.artifact.path, self.tile_context, self.context_side)(x)

    def tile_context(self) -> TileContext | None:
        """The model's tile companions on this backend, loaded once, when a frame is first tiled."""
        if self.companions is not None:
            self.context, self.companions = self.companions(), None
        return self.context

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """``(H, W)`` when the backend's input has a fixed spatial size (a static-shape export)."""
        return fixed_input_size(self.backend)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return to_image(self.run_tensor(to_tensor(rgb)))

    def close(self) -> None:
        self.backend.close()
        if self.context is not None:
            self.context.close()


def backend_for(artifact: Artifact, backend: str) -> str:
    """The default backend for an artifact kind when the user said nothing more specific."""
    return backend if backend != "default" else default_backend(artifact.kind)


def open_enhancer(model: str, backend: str = "default", tile: int = DEFAULT_TILE, overlap: int = 32,
                  tta: int = 1, gate: bool = True, context_side: int = CONTEXT_SIDE, **options) -> Enhancer:
    """Resolve ``model`` (shipped name or file), load it on ``backend`` and wrap it in an :class:`Enhancer`
    (``tta`` > 1: a geometric self-ensemble of that many passes, see :func:`self_ensemble`; ``gate``: the
    exposure gate for enhancement models, :mod:`deepfusionnet.runtime.gate`)."""
    artifact = resolve(model, shipped_kind(backend))
    name = backend_for(artifact, backend)
    be = load_backend(name, artifact.path, **options)
    try:
        check_image_io(be, artifact.path)
        keep_bright = ExposureGate() if gate and artifact.task == "enhance" else None
        companions = partial(load_tile_context, name, artifact.path, artifact.kind, **options)
        return Enhancer(be, artifact, tile, overlap, tta, keep_bright, companions=companions,
                        context_side=context_side)
    except BaseException:
        be.close()
        raise


def check_image_io(be: Backend, path) -> None:
    """Refuse a model that is not image-to-image (one float (N, 3, H, W) input, a 3-channel output)
    before any frame reaches it, so a foreign ONNX or engine is a clear error, not a crash or a silently
    wrong picture. Dimensions a backend reports as dynamic (None, strings, -1) are accepted."""

    def fits(t) -> bool:
        if not t.shape:  # a backend that cannot tell: nothing to check
            return True
        c = t.shape[1] if len(t.shape) > 1 else None
        return len(t.shape) == 4 and (c == 3 or not (isinstance(c, int) and c > 0))

    ins, outs = list(be.inputs), list(be.outputs)
    bad = (len(ins) != 1 or not outs or not fits(ins[0]) or not fits(outs[0])
           or ins[0].dtype not in ("float32", "float16"))
    if bad:
        desc = "; ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in ins + outs[:1])
        raise DFNError(f"{path}: not an image enhancement model (has {desc}; expected one float (1, 3, H, W) "
                       "input and a (1, 3, H', W') output)")


@dataclass
class Chain:
    """The enhancer followed by a super-resolution model, both in float (no uint8 round trip between).

    ``fast=False``: enhance, then upscale (output ``sr.scale`` x larger). ``fast=True``: shrink the frame
    by ``sr.scale``, enhance at that size and let the SR model bring it back to the input size, which
    costs about a quarter of the enhancer's full-size work (for cameras that need the frame rate).
    """

    enhancer: Enhancer
    sr: Enhancer | None = None
    fast: bool = False

    def __post_init__(self) -> None:
        if self.fast and self.sr is None:
            raise ValueError("fast mode needs an SR model")

    @property
    def scale(self) -> int:
        if self.sr is None or self.fast:
            return self.enhancer.scale
        return self.enhancer.scale * self.sr.scale

    @property
    def task(self) -> str:
        """An enhancer followed by an upscaler enhances and upscales; --fast gives the input size back."""
        return self.enhancer.task if self.sr is None or self.fast else "enhance-sr"

    @property
    def stages(self) -> list[Enhancer]:
        return [self.enhancer] + ([self.sr] if self.sr is not None else [])

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW in [0, 1] -> float32 NCHW, ``scale`` x larger."""
        if self.sr is None:
            return self.enhancer.run_tensor(x)
        if not self.fast:
            return self.sr.run_tensor(self.enhancer.run_tensor(x))
        h, w = x.shape[-2:]
        s = self.sr.scale
        small = resize_tensor(x, (-(-h // s), -(-w // s)))
        y = self.sr.run_tensor(self.enhancer.run_tensor(small))
        return y[..., :h, :w] if y.shape[-2:] != (h, w) else y  # ceil(h/s)*s overshoots by < s pixels

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return to_image(self.run_tensor(to_tensor(rgb)))

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
