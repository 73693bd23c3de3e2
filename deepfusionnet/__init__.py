"""DeepFusionNet deploy toolkit: train -> ONNX -> TensorRT, and a lean runtime for Jetson and CPUs.

The stage folders install as ``deepfusionnet.train``, ``deepfusionnet.export`` and
``deepfusionnet.runtime``; this top package holds only the version, the CLI entry and the
user-facing error type, so importing it never pulls in torch.
"""

import os as _os

from deepfusionnet.errors import DFNError, MissingExtraError

# Imported from a source checkout (e.g. `python -c ...` run in the repository root while a regular,
# non-editable install sits in site-packages): the stage folders are siblings of this package, so let
# deepfusionnet.runtime/.train/.export resolve to them instead of failing.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
        _os.path.join(_checkout, "runtime", "__init__.py")):
    __path__.append(_checkout)

__version__ = "0.1.0"
__all__ = ["DFNError", "MissingExtraError", "__version__"]
