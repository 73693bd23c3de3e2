"""The PyTorch eager reference backend, registered in the runtime by dotted path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepfusionnet.runtime.backends.base import TensorInfo
from deepfusionnet.train.weights import load_model


class TorchBackend:
    name = "torch"

    def __init__(self, path: Path, threads: int | None = None, arch: str | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model, self.model_name = load_model(path, arch)
        self.inputs = [TensorInfo("input", (1, 3, "height", "width"), "float32")]
        self.outputs = [TensorInfo("output", (1, 3, "out_height", "out_width"), "float32")]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        with torch.inference_mode():
            y = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return {"output": y.numpy()}

    def close(self) -> None:
        self.model = None


def load(path: Path, **options) -> TorchBackend:
    return TorchBackend(path, **options)
