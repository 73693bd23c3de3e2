"""The JSON sidecar beside a model file (``X.onnx`` -> ``X.onnx.json``) as one typed, validated record.

``dfn export`` and ``dfn build`` write it (:mod:`deepfusionnet.export.sidecar`, ``export/tensorrt.py``);
the runtime reads it (:func:`deepfusionnet.runtime.artifacts.read_sidecar`). The ``dfn.*`` metadata of
an ONNX or safetensors file goes through the same checks, so a damaged or hostile sidecar or property
is a one-line error naming the file and the field, never a crash deep in a backend.

The fields the runtime acts on are typed attributes; every other field (provenance: tool versions,
hashes, calibration settings, export options) is kept as it is in :attr:`Sidecar.extra` and written
back in its place. Needs neither torch nor onnx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from deepfusionnet.errors import DFNError


def sidecar_path(path: str | Path) -> Path:
    """``X.onnx`` -> ``X.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# ---------------------------------------------------------------------------------------------------
# Field checks: each returns the value to use, or raises ValueError with what was expected.


def _integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    """An integer (or its decimal text, as ONNX metadata stores it) from ``lo`` to ``hi``."""
    expected = f"an integer from {lo} to {hi}" if hi is not None else f"an integer of at least {lo}"

    def check(value):
        if isinstance(value, bool):
            raise ValueError(expected)
        try:
            number = int(value) if isinstance(value, (int, str)) else value
        except ValueError:
            raise ValueError(expected) from None
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not isinstance(number, int) or number < lo or (hi is not None and number > hi):
            raise ValueError(expected)
        return number

    return check


def _of_type(*types: type, expected: str) -> Callable[[Any], Any]:
    def check(value):
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(expected)
        return value

    return check


def _task(value):
    from deepfusionnet.runtime.tasks import TASKS

    if value not in TASKS:
        raise ValueError(f"one of {', '.join(TASKS)}")
    return value


def _tensor_list(value):
    ok = isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                         and isinstance(t.get("shape"), list) for t in value)
    if not ok:
        raise ValueError('a list of {"name": ..., "shape": [...], "dtype": ...}')
    return value


def _checked(check: Callable[[Any], Any]) -> Any:
    """A typed :class:`Sidecar` field (absent = ``None``) and the check its value passes."""
    return field(default=None, metadata={"check": check})


_OBJECT = _of_type(dict, expected="an object")


@dataclass
class Sidecar:
    """What a sidecar records. ``None`` is an absent field (a JSON ``null`` counts as absent)."""

    model: str | None = _checked(_of_type(str, expected="a model name (text)"))
    precision: str | None = _checked(_of_type(str, expected="a precision name such as fp32 (text)"))
    scale: int | None = _checked(_integer(1, 16))
    multiple: int | None = _checked(_integer(1, 4096))
    task: str | None = _checked(_task)  # one of runtime.artifacts.TASKS
    params: int | None = _checked(_integer(0))
    # {slope, centre, offset} or its JSON text (runtime.exposure.parse_exposure reads both)
    exposure: dict | str | None = _checked(
        _of_type(dict, str, expected="an exposure calibration {slope, centre, offset}"))
    inputs: list[dict] | None = _checked(_tensor_list)  # [{"name", "shape", "dtype"}]
    outputs: list[dict] | None = _checked(_tensor_list)
    # engines (dfn build): the plan's size and hash, and what it was built with and on
    engine_bytes: int | None = _checked(_integer(0))
    engine_sha256: str | None = _checked(_of_type(str, expected="a sha256 in hex"))
    tensorrt: str | None = _checked(_of_type(str, expected="a TensorRT version (text)"))
    gpu: dict | None = _checked(_OBJECT)
    onnx: dict | None = _checked(_OBJECT)  # the graph an engine was built from: path, sha256, precision
    build: dict | None = _checked(_OBJECT)  # build options, cli_args (the rebuild hint), timing cache
    # checks the export ran: parity against PyTorch, TensorRT conformance and Polygraphy's lint
    parity: dict | list | None = _checked(
        _of_type(dict, list, expected="parity results (an object or a list)"))
    conformance: dict | None = _checked(_OBJECT)
    # every other field, as it was: provenance nobody reads back
    extra: dict = field(default_factory=dict)
    # the field order of the document read, kept when written back
    order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc, where: str | Path) -> Sidecar:
        """``doc`` (a sidecar, or the ``dfn.*`` metadata of an ONNX or safetensors file) checked field by
        field; a damaged or hostile one is a one-line :class:`DFNError` naming ``where`` and the field."""
        if not isinstance(doc, dict):
            raise DFNError(f"{where}: not a model sidecar: expected a JSON object such as "
                           f'{{"model": "deepfusionnet", "scale": 1, "multiple": 8}}, '
                           f"found {type(doc).__name__}")
        typed = {}
        for f in _typed_fields():
            value = doc.get(f.name)
            if value is None:
                continue
            try:
                typed[f.name] = f.metadata["check"](value)
            except ValueError as exc:
                shown = repr(value)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise DFNError(f"{where}: \"{f.name}\" is {shown}; expected {exc}") from None
        names = {f.name for f in _typed_fields()}
        extra = {k: v for k, v in doc.items() if k not in names}
        return cls(**typed, extra=extra, order=tuple(doc))

    @classmethod
    def read(cls, path: str | Path) -> Sidecar:
        """The sidecar beside ``path`` (an empty one when there is none), checked."""
        sc = sidecar_path(path)
        if not sc.is_file():
            return cls()
        try:
            doc = json.loads(sc.read_text())
        except (OSError, ValueError) as exc:
            raise DFNError(f"{sc}: unreadable sidecar, not valid JSON ({exc})") from None
        return cls.from_dict(doc, sc)

    def to_dict(self) -> dict:
        """The JSON document: the fields present, in the order read (new ones after, typed first)."""
        doc = {f.name: getattr(self, f.name) for f in _typed_fields() if getattr(self, f.name) is not None}
        doc.update(self.extra)
        rank = {k: i for i, k in enumerate(self.order)}
        return dict(sorted(doc.items(), key=lambda kv: rank.get(kv[0], len(rank))))

    @property
    def empty(self) -> bool:
        """Whether no field is present (no sidecar beside the file, or an empty one)."""
        return not self.to_dict()

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, default=str) + "\n").encode()


def _typed_fields():
    return [f for f in fields(Sidecar) if "check" in f.metadata]
