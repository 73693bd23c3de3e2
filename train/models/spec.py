"""What a registered model is (:class:`ModelSpec`) and the registry's table: the model files import
only this module, so the registry (which imports every model file) and the models import one way."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from torch import nn

from deepfusionnet.runtime.artifacts import TASKS, default_task


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    scale: int  # output size / input size
    multiple: int  # input H and W must be multiples of this
    description: str = ""
    # What input it takes to what target (runtime.artifacts.TASKS); "" = by scale: enhance, or sr for x2.
    task: str = ""
    # A discriminator builder for adversarial training (dfn train --unpaired); never exported.
    discriminator: Callable[[], nn.Module] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", self.task or default_task(self.scale))
        if self.task not in TASKS:
            raise ValueError(f"model {self.name!r}: task must be one of {', '.join(TASKS)}, not {self.task!r}")


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        warnings.warn(f"model {spec.name!r} registered twice; the later definition wins", stacklevel=2)
    _REGISTRY[spec.name] = spec
    return spec
