"""Building blocks shared by the DeepFusionNet family.

Every block is export-safe: fixed kernel sizes, global pooling written as reductions (ONNX
``ReduceMean``/``ReduceMax``), nothing that reads the input shape in ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_prelu(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    """Conv (same padding, bias) followed by a single-slope PReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.PReLU())


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then 7x7 spatial attention.

    Channel attention runs a shared bias-free MLP (1x1 convs, hidden ``max(C // 16, 1)``) on the
    global average and global max, sums, and applies a sigmoid gate. Shapes are unchanged.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.channels = channels
        # Seam-free tiles (train.models.context): the channel gate's logits of a whole frame are recorded
        # here, or given here to every tile of it. Plain attributes, not state: weights files are unchanged.
        self.given: torch.Tensor | None = None
        self.record: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.given is not None:
            logits = self.given
        else:
            # Reductions instead of AdaptiveAvgPool2d: exports as ReduceMean/ReduceMax for any H, W.
            avg = x.mean(dim=(2, 3), keepdim=True)
            mx = x.amax(dim=(2, 3), keepdim=True)
            logits = self.mlp(avg) + self.mlp(mx)
            if self.record is not None:
                self.record.append(logits)
        x = x * torch.sigmoid(logits)
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(s))


class Stage(nn.Module):
    """``k`` x [Conv3x3 + PReLU] -> BatchNorm2d -> CBAM (the paper's "sequential CNN" stage)."""

    def __init__(self, cin: int, cout: int, convs: int = 2) -> None:
        super().__init__()
        layers = [conv_prelu(cin if i == 0 else cout, cout) for i in range(convs)]
        self.convs = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cout)
        self.cbam = CBAM(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(self.bn(self.convs(x)))


class GhostHead(nn.Module):
    """Parallel 3x3 and 5x5 convs, each with a GhostConv-style depthwise partner (Fig. 1).

    ``out = cat[a, DW(a), b, PReLU(DW(b))]`` with ``a = PReLU(Conv3x3(x))``, ``b = PReLU(Conv5x5(x))``;
    only the 5x5 branch gets the second PReLU ("passed and unpassed values").
    """

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.a = conv_prelu(cin, width, 3)
        self.b = conv_prelu(cin, width, 5)
        self.dw_a = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.dw_b = conv_prelu(width, width, 3, groups=width)

    @property
    def out_channels(self) -> int:
        return 4 * self.dw_a.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(x)
        return torch.cat([a, self.dw_a(a), b, self.dw_b(b)], dim=1)


class DenseBottleneck(nn.Module):
    """1x1 reduction then ``n`` chained 3x3 convs, all outputs concatenated (Fig. 3), BN, CBAM."""

    def __init__(self, cin: int, reduced: int, growth: int, n: int) -> None:
        super().__init__()
        self.reduce = conv_prelu(cin, reduced, 1)
        self.chain = nn.ModuleList(conv_prelu(reduced if i == 0 else growth, growth) for i in range(n))
        self.out_channels = reduced + n * growth
        self.bn = nn.BatchNorm2d(self.out_channels)
        self.cbam = CBAM(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        outs = [y]
        for conv in self.chain:
            y = conv(y)
            outs.append(y)
        return self.cbam(self.bn(torch.cat(outs, dim=1)))


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2, ``align_corners=False``: exports as Resize(linear, half_pixel) with scale 2."""
    return nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
