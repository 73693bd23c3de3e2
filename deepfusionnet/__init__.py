"""DeepFusionNet deploy toolkit: train -> ONNX -> TensorRT, and a lean runtime for Jetson and CPUs.

The stage folders install as ``deepfusionnet.train``, ``deepfusionnet.export`` and
``deepfusionnet.runtime``; this top package holds only the version, the CLI entry and the
user-facing error type, so importing it never pulls in torch.
"""

from deepfusionnet.errors import DFNError, MissingExtraError

__version__ = "0.1.0"
__all__ = ["DFNError", "MissingExtraError", "__version__"]
