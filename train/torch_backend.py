"""The PyTorch eager reference backend, registered in the runtime by dotted path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.backends.base import TensorInfo
from deepfusionnet.train import device as dev
from deepfusionnet.train.models.context import ContextGraph, TileGraph, context_width
from deepfusionnet.train.weights import load_model


def companion_module(model: torch.nn.Module, graph: str, path: Path) -> torch.nn.Module:
    """``model`` itself, or its ``"context"``/``"tile"`` companion (:mod:`.models.context`)."""
    if graph == "model":
        return model
    if graph not in ("context", "tile"):
        raise ValueError(f"graph must be model, context or tile, not {graph!r}")
    if not context_width(model):
        raise DFNError(f"{path}: this model has no channel attention to share between tiles")
    return ContextGraph(model) if graph == "context" else TileGraph(model)


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
                 device: str = "cpu", graph: str = "model") -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = dev.resolve_device(device, dev.probe())
        reference_precision(self.device)
        model, self.model_name = load_model(path, arch)
        self.model = companion_module(model.eval(), graph, path).to(self.device)
        self.inputs = [TensorInfo("input", (1, 3, "height", "width"), "float32")]
        self.outputs = [TensorInfo("output", (1, 3, "out_height", "out_width"), "float32")]
        if graph != "model":  # the same names and shapes as the exported companions
            width = context_width(model)
            if graph == "tile":
                self.inputs.append(TensorInfo("context", (1, width), "float32"))
            else:
                self.outputs = [TensorInfo("context", (1, width), "float32")]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            arrays = list(feed.values()) if len(self.inputs) == 1 else [feed[t.name] for t in self.inputs]
            args = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)
                    for a in arrays]
            y = self.model(*args).float().cpu()  # the copy back waits for the GPU: timings stay honest
        return {self.outputs[0].name: y.numpy()}

    def close(self) -> None:
        self.model = None


def load(path: Path, **options) -> TorchBackend:
    return TorchBackend(path, **options)
