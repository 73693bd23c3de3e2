"""A plain-dict model registry: ``create_model(name)`` builds a registered architecture."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from torch import nn

from deepfusionnet.errors import DFNError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    scale: int  # output size / input size
    multiple: int  # input H and W must be multiples of this
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        warnings.warn(f"model {spec.name!r} registered twice; the later definition wins", stacklevel=2)
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    # One import per model family file; each registers its names on import.
    from deepfusionnet.train.models import deepfusionnet  # noqa: F401


def model_names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DFNError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str) -> nn.Module:
    """Build an untrained model by registered name (``deepfusionnet``, ``deepfusionnet-sr``)."""
    return get_spec(name).build()
