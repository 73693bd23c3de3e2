"""Image in, image out: one backend plus the shared pre/post-processing (pad, tile, crop)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepfusionnet.runtime.artifacts import Artifact, resolve
from deepfusionnet.runtime.backends.base import Backend, load_backend
from deepfusionnet.runtime.processing import run_tiled, to_image, to_tensor

# Frames above this many pixels on a side run in tiles (bounded memory on 4-8 GB Jetsons).
DEFAULT_TILE = 1024


@dataclass
class Enhancer:
    """Runs one model on uint8 RGB frames of any size."""

    backend: Backend
    artifact: Artifact
    tile: int = DEFAULT_TILE
    overlap: int = 32

    @property
    def scale(self) -> int:
        return self.artifact.scale

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW in [0, 1] (any H, W) -> float32 NCHW, ``scale`` x larger."""
        name_in = self.backend.inputs[0].name
        name_out = self.backend.outputs[0].name
        dtype = np.dtype(self.backend.inputs[0].dtype) if self.backend.inputs[0].dtype in ("float32", "float16") else np.float32

        def fn(t: np.ndarray) -> np.ndarray:
            return np.asarray(self.backend.infer({name_in: np.ascontiguousarray(t, dtype=dtype)})[name_out], np.float32)

        return run_tiled(fn, x, self.tile, self.overlap, self.scale, self.artifact.multiple)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return to_image(self.run_tensor(to_tensor(rgb)))

    def close(self) -> None:
        self.backend.close()


def backend_for(artifact: Artifact, backend: str) -> str:
    """The default backend for an artifact kind when the user said nothing more specific."""
    if backend != "default":
        return backend
    return {"engine": "tensorrt", "weights": "torch", "openvino": "openvino"}.get(artifact.kind, "onnxruntime")


def open_enhancer(model: str, backend: str = "default", tile: int = DEFAULT_TILE, overlap: int = 32, **options) -> Enhancer:
    """Resolve ``model`` (shipped name or file), load it on ``backend`` and wrap it in an :class:`Enhancer`."""
    kind = "weights" if backend == "torch" else None
    artifact = resolve(model, kind)
    name = backend_for(artifact, backend)
    be = load_backend(name, artifact.path, **options)
    return Enhancer(be, artifact, tile, overlap)
