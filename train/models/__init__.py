"""Model families; ``create_model(name)`` is the one public factory."""

from deepfusionnet.train.models.registry import ModelSpec, create_model, get_spec, model_names, register

__all__ = ["ModelSpec", "create_model", "get_spec", "model_names", "register"]
