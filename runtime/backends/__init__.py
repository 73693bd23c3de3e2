"""Inference backends behind one contract; see :mod:`.base`."""

from deepfusionnet.runtime.backends.base import BACKENDS, Backend, TensorInfo, backend_names, load_backend

__all__ = ["BACKENDS", "Backend", "TensorInfo", "backend_names", "load_backend"]
