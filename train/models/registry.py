"""A plain-dict model registry: ``create_model(name)`` builds a registered architecture.

The families under ``train/models/`` register their names on import (:func:`_load_families` lists them);
installed packages add theirs through the ``deepfusionnet.models`` entry point group; and ``dfn export``
registers a user's ``package.module:function`` under that string (:func:`entry_point_spec`).
"""

from __future__ import annotations

import importlib
import re
import warnings
from typing import TYPE_CHECKING

from deepfusionnet.errors import DFNError
from deepfusionnet.train.models.spec import _REGISTRY, ModelSpec, register

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelSpec", "register", "get_spec", "model_names", "create_model", "entry_point_spec"]

ENTRY_POINT_GROUP = "deepfusionnet.models"  # installed packages register their models here
_plugins_loaded = False


# One module per model family under train/models/; each registers its names on import.
FAMILIES = ("cyclegan_ema_aspp", "deepfusionnet", "mirnet", "neid", "study_cnn", "unet_sid")


def _load_families() -> None:
    for family in FAMILIES:
        importlib.import_module(f"deepfusionnet.train.models.{family}")
    _load_plugins()


def _load_plugins() -> None:
    """Models of installed packages: each ``deepfusionnet.models`` entry point names a module that registers
    its models on import, or a :class:`ModelSpec`. Loaded once; a broken plugin warns and is skipped."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # someone else's package must not break every dfn command
            warnings.warn(f"model plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: "
                          f"{exc}", stacklevel=2)
            continue
        if isinstance(obj, ModelSpec):
            register(obj)


def model_names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        if is_entry_point(name):
            # Never imported on the strength of a name read from a file: that would run code the file chose.
            raise DFNError(f"model {name!r} is defined outside deepfusionnet and not registered in this "
                           f"process; export it with dfn export {name} --weights FILE, or register it "
                           f"through the {ENTRY_POINT_GROUP!r} entry point group (docs/models.md)") from None
        raise DFNError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


_ENTRY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_entry_point(text: str) -> bool:
    """``package.module:attribute``: a model defined outside deepfusionnet."""
    return bool(_ENTRY.match(text))


def entry_point_spec(target: str, scale: int | None = None, multiple: int | None = None) -> ModelSpec:
    """Import ``package.module:attribute`` and register it under that string.

    The attribute is a :class:`ModelSpec`, or a callable returning an ``nn.Module`` (RGB [0, 1] NCHW in,
    RGB [0, 1] NCHW out), optionally with ``scale`` and ``multiple`` attributes. ``scale`` (output size /
    input size, default 1) and ``multiple`` (H and W must be multiples of it, default 1) are declared once:
    here (``dfn export --scale/--multiple``) or on the attribute; both, and differing, is an error.
    """
    if not is_entry_point(target):
        raise DFNError(f"{target!r}: expected package.module:function, e.g. my_pkg.models:build_net")
    module_name, attr = target.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise DFNError(f"{target}: cannot import {module_name} ({exc}); is it installed or on "
                       "PYTHONPATH?") from None
    except Exception as exc:  # the user's module raised while importing
        raise DFNError(f"{target}: importing {module_name} failed ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DFNError(f"{target}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, ModelSpec):
        build, declared = obj.build, {"scale": obj.scale, "multiple": obj.multiple}
    elif callable(obj):
        build, declared = obj, {k: getattr(obj, k) for k in ("scale", "multiple") if hasattr(obj, k)}
    else:
        raise DFNError(f"{target}: is a {type(obj).__name__}, not a function that builds the model")
    values = {}
    for key, given in (("scale", scale), ("multiple", multiple)):
        own = declared.get(key)
        if given is not None and own is not None and given != own:
            raise DFNError(f"{target}: declares {key} {own}, but --{key} {given} was given; declare it once")
        value = given if given is not None else own if own is not None else 1
        top = 16 if key == "scale" else 4096  # the sidecar schema's bounds
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise DFNError(f"{target}: {key} must be an integer from 1 to {top}, not {value!r}")
        values[key] = value
    spec = ModelSpec(name=target, build=build, scale=values["scale"], multiple=values["multiple"],
                     description=f"user model {target}")
    _REGISTRY[target] = spec  # replaces an earlier declaration of the same entry point
    return spec


def create_model(name: str) -> nn.Module:
    """Build an untrained model by registered name (``deepfusionnet``, ``deepfusionnet-sr``)."""
    return get_spec(name).build()
