"""Global context for seam-free tiles: one frame's channel-attention logits, handed to each of its tiles.

CBAM's channel gate pools over the whole feature map, so a tile alone sees only its own statistics and
neighbouring tiles come out at different brightness. Everything else in these networks is local, so a
tile whose every CBAM gets the logits of the whole frame matches the whole frame's output away from its
border (the overlap and the feathering take the border). :class:`ContextGraph` computes the logits of a
frame (the runtime gives it the frame downscaled to one tile, so its memory stays that of one tile);
:class:`TileGraph` runs a tile with them. Both export to ONNX as the ``.context`` and ``.tile``
companions of a graph (``export.tile_graphs``).

The logits are concatenated in module order (``net.modules()``), one ``(1, channels)`` slice per CBAM.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfusionnet.train.models.blocks import CBAM


def attention_blocks(net: nn.Module) -> list[CBAM]:
    """Every CBAM of ``net``, in module order."""
    return [m for m in net.modules() if isinstance(m, CBAM)]


def context_width(net: nn.Module) -> int:
    """Length of ``net``'s context vector: the channels of all its CBAMs (0: nothing to share)."""
    return sum(b.channels for b in attention_blocks(net))


class ContextGraph(nn.Module):
    """``(1, 3, H, W)`` frame -> ``(1, context_width)`` channel-attention logits of every CBAM."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = attention_blocks(self.net)
        records: list[list[torch.Tensor]] = [[] for _ in blocks]
        for b, r in zip(blocks, records):
            b.record = r
        try:
            self.net(x)  # the output is unused: the exporter drops what only it needed
        finally:
            for b in blocks:
                b.record = None
        if any(len(r) != 1 for r in records):
            raise ValueError("a CBAM ran more or less than once per frame; its context is not defined")
        return torch.cat([r[0].flatten(1) for r in records], dim=1)


class TileGraph(nn.Module):
    """``(1, 3, h, w)`` tile and ``(1, context_width)`` logits of its frame -> the network's output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        blocks = attention_blocks(self.net)
        parts = torch.split(context, [b.channels for b in blocks], dim=1)
        for b, p in zip(blocks, parts):
            b.given = p.reshape(p.shape[0], b.channels, 1, 1)
        try:
            return self.net(x)
        finally:
            for b in blocks:
                b.given = None
