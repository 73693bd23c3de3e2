"""Inference backends behind one contract, and the registry of them; see :mod:`.base`."""

from deepfusionnet.runtime.backends.base import (BACKENDS, Backend, BackendEntry, TensorInfo, backend_names,
                                                 load_backend, register)

__all__ = ["BACKENDS", "Backend", "BackendEntry", "TensorInfo", "backend_names", "load_backend", "register"]
