"""Image in, image out: one backend plus the shared pre/post-processing (pad, tile, crop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import Artifact, resolve
from deepfusionnet.runtime.backends.base import Backend, default_backend, load_backend, shipped_kind
from deepfusionnet.runtime.processing import require_finite, run_tiled, to_image, to_tensor
from deepfusionnet.runtime.gate import ExposureGate

# Frames above this many pixels on a side run in tiles (bounded memory on 4-8 GB Jetsons).
DEFAULT_TILE = 1024
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


def network_fn(backend: Backend, scale: int, multiple: int, tile: int = DEFAULT_TILE, overlap: int = 32,
               path=None) -> Callable[[np.ndarray], np.ndarray]:
    """float32 NCHW in [0, 1] of any H, W -> the network's float32 output, ``scale`` x larger.

    The one place a frame meets a graph's input shape, for every caller (enhance, eval, parity, auto,
    bench): frames are padded to the input multiple, or to exactly the input size of a fixed-size graph
    (larger ones run in tiles of that size), and the output is cropped back.
    """
    name_in, name_out = backend.inputs[0].name, backend.outputs[0].name
    dtype = np.float16 if backend.inputs[0].dtype == "float16" else np.float32

    def fn(t: np.ndarray) -> np.ndarray:
        y = np.asarray(backend.infer({name_in: np.ascontiguousarray(t, dtype=dtype)})[name_out], np.float32)
        if y.shape[-2:] != (t.shape[-2] * scale, t.shape[-1] * scale):
            # A wrong scale would otherwise be cropped away silently.
            where = path if path is not None else backend.name
            raise DFNError(f"{where}: output {y.shape[-2]}x{y.shape[-1]} for an input of "
                           f"{t.shape[-2]}x{t.shape[-1]}, expected scale {scale} (set \"scale\" in "
                           f"the model's .json sidecar)")
        require_finite(y, path if path is not None else backend.name, backend.name)
        return y

    fixed = fixed_input_size(backend)
    if fixed is None:
        return lambda x: run_tiled(fn, x, tile, overlap, scale, multiple)
    run_one = fn

    def fn_fixed(t: np.ndarray) -> np.ndarray:  # pad each frame (or tile) up to exactly the graph's size
        h, w = t.shape[-2:]
        tp = np.pad(t, ((0, 0), (0, 0), (0, fixed[0] - h), (0, fixed[1] - w)), mode="symmetric")
        return run_one(tp)[..., : h * scale, : w * scale]

    def run(x: np.ndarray) -> np.ndarray:
        if x.shape[-2] <= fixed[0] and x.shape[-1] <= fixed[1]:
            return fn_fixed(x)
        return run_tiled(fn_fixed, x, min(tile, *fixed), overlap, scale, multiple)

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
                          self.artifact.path)(x)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """``(H, W)`` when the backend's input has a fixed spatial size (a static-shape export)."""
        return fixed_input_size(self.backend)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return to_image(self.run_tensor(to_tensor(rgb)))

    def close(self) -> None:
        self.backend.close()


def backend_for(artifact: Artifact, backend: str) -> str:
    """The default backend for an artifact kind when the user said nothing more specific."""
    return backend if backend != "default" else default_backend(artifact.kind)


def open_enhancer(model: str, backend: str = "default", tile: int = DEFAULT_TILE, overlap: int = 32,
                  tta: int = 1, gate: bool = True, **options) -> Enhancer:
    """Resolve ``model`` (shipped name or file), load it on ``backend`` and wrap it in an :class:`Enhancer`
    (``tta`` > 1: a geometric self-ensemble of that many passes, see :func:`self_ensemble`; ``gate``: the
    exposure gate for enhancement models, :mod:`deepfusionnet.runtime.gate`)."""
    artifact = resolve(model, shipped_kind(backend))
    name = backend_for(artifact, backend)
    be = load_backend(name, artifact.path, **options)
    try:
        check_image_io(be, artifact.path)
        keep_bright = ExposureGate() if gate and artifact.task == "enhance" else None
        return Enhancer(be, artifact, tile, overlap, tta, keep_bright)
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


def resize_tensor(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize a float ``(1, 3, H, W)`` tensor to ``size`` = (H, W)."""
    h, w = size
    hwc = np.ascontiguousarray(x[0].transpose(1, 2, 0))
    out = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])
