"""Seam-free tiles: every tile of a frame runs with the frame's global context.

A network whose attention pools over the whole image (DeepFusionNet's CBAM channel gates) sees only its
own tile when a large frame runs in tiles, and neighbouring tiles come out at different brightness. For
such networks the export writes two companions beside the graph (``X.context.onnx``: image -> the
attention's logits; ``X.tile.onnx``: image and those logits -> output). When a frame is tiled, the
runtime runs the context graph once on the frame downscaled to fit one tile (so memory stays that of one
tile), then every tile with the result. Frames that fit in one tile run the plain graph, unchanged.
The PyTorch backend builds both companions from the weights (``graph="context"``/``"tile"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.backends.base import Backend, load_backend
from deepfusionnet.runtime.processing import resize_tensor

CONTEXT = "context"  # the context graph's output and the tile graph's second input
ROLES = ("context", "tile")


def companion_path(path: str | Path, role: str) -> Path:
    """``X.onnx`` -> ``X.context.onnx`` / ``X.tile.onnx`` (the same for ``.engine``, ``.xml`` ...)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{role}{path.suffix}")


def companion_files(path: str | Path) -> list[Path] | None:
    """``[X.context, X.tile]`` beside ``path`` when both exist, else None."""
    files = [companion_path(path, r) for r in ROLES]
    return files if all(f.is_file() for f in files) else None


@dataclass
class TileContext:
    """The two companion graphs of one model, loaded on one backend."""

    context: Backend  # input -> context
    tile: Backend  # input, context -> output

    def close(self) -> None:
        self.context.close()
        self.tile.close()


def load_tile_context(backend: str, path: str | Path, kind: str, **options) -> TileContext | None:
    """The companions of ``path`` on ``backend``, or None when the model has none (it then tiles without
    a shared context). Weights files build them in PyTorch; other files need ``X.context``/``X.tile``
    beside them (``dfn export`` writes them for models with channel attention)."""
    path = Path(path)
    if kind == "weights":
        try:
            ctx = load_backend(backend, path, graph="context", **options)
        except DFNError:  # no channel attention in this network: nothing to share
            return None
        return TileContext(ctx, load_backend(backend, path, graph="tile", **options))
    files = companion_files(path)
    if files is None:
        return None
    ctx = load_backend(backend, files[0], **options)
    try:
        tile = load_backend(backend, files[1], **options)
    except BaseException:
        ctx.close()
        raise
    return TileContext(ctx, tile)


def context_frame(x: np.ndarray, fit: tuple[int, int]) -> np.ndarray:
    """NCHW ``x`` area-downscaled to fit ``fit`` = (H, W), aspect kept (unchanged if it fits)."""
    h, w = x.shape[-2:]
    s = min(fit[0] / h, fit[1] / w)
    if s >= 1:
        return x
    size = (min(fit[0], max(1, round(h * s))), min(fit[1], max(1, round(w * s))))
    return resize_tensor(np.asarray(x, np.float32), size)


def context_input(backend: Backend) -> str:
    """Name of the tile graph's context input (a one-line error when the file is not a tile graph)."""
    names = [i.name for i in backend.inputs]
    if len(names) != 2 or CONTEXT not in names:
        raise DFNError(f"{backend.name}: a tile graph takes an image and a {CONTEXT!r} input, not {names}")
    return CONTEXT
