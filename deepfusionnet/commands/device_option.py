"""``--device`` of the inference commands: where the torch backend runs (torch-free, for --help).

The other backends choose their device themselves (ONNX Runtime by execution provider, TensorRT by
engine), so ``--device`` with one of them is a one-line error rather than an option silently ignored.
"""

from __future__ import annotations

import argparse

from deepfusionnet.errors import DFNError


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="auto|cpu|cuda|cuda:N",
                   help="where the torch backend runs (default: cpu, the FP32 reference; auto: CUDA when a "
                        "GPU is visible); other backends pick their own device")


def torch_device_options(device: str | None, backend: str) -> dict:
    """``{"device": device}`` for a backend that takes a device (the torch backend; its registry entry
    says so); nothing when ``--device`` was not given."""
    from deepfusionnet.runtime.backends.base import BACKENDS

    if device is None:
        return {}
    if not (backend in BACKENDS and BACKENDS[backend].device):
        raise DFNError(f"--device {device} places the torch backend, and {backend} runs this model; "
                       "add --backend torch (other backends choose their own device)")
    return {"device": device}
