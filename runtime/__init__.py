"""The lean device runtime: numpy + OpenCV + one inference engine; never imports torch."""

from deepfusionnet.runtime.backends import Backend, TensorInfo, backend_names, load_backend
from deepfusionnet.runtime.images import read_image, write_image
from deepfusionnet.runtime.processing import pad_to_multiple, crop, run_tiled, to_image, to_tensor

__all__ = ["Backend", "TensorInfo", "backend_names", "load_backend", "read_image", "write_image",
           "pad_to_multiple", "crop", "run_tiled", "to_image", "to_tensor"]
