"""The PyTorch eager reference backend, registered in the runtime by dotted path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepfusionnet.runtime.backends.base import TensorInfo
from deepfusionnet.train import device as dev
from deepfusionnet.train.weights import load_model


def reference_precision(device: torch.device) -> None:
    """FP32 convolutions and matmuls in full precision on CUDA: torch's default lets cuDNN run FP32
    convolutions in TF32 (10-bit mantissa), which would make the reference itself the largest error in
    a parity check. Process-wide: a process serving the reference wants it everywhere."""
    if device.type == "cuda":
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"


class TorchBackend:
    name = "torch"

    def __init__(self, path: Path, threads: int | None = None, arch: str | None = None,
                 device: str = "cpu") -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = dev.resolve_device(device, dev.probe())
        reference_precision(self.device)
        model, self.model_name = load_model(path, arch)
        self.model = model.to(self.device)
        self.inputs = [TensorInfo("input", (1, 3, "height", "width"), "float32")]
        self.outputs = [TensorInfo("output", (1, 3, "out_height", "out_width"), "float32")]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            y = self.model(x).float().cpu()  # the copy back waits for the GPU: timings stay honest
        return {"output": y.numpy()}

    def close(self) -> None:
        self.model = None


def load(path: Path, **options) -> TorchBackend:
    return TorchBackend(path, **options)
