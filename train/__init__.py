"""Training stage (needs the ``train`` extra: torch): models, data, losses, the training loop."""

from deepfusionnet.errors import require

require("torch", "train")

from deepfusionnet.train.models import create_model, get_spec, model_names  # noqa: E402

__all__ = ["create_model", "get_spec", "model_names"]
