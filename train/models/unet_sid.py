"""The See-in-the-Dark U-Net used by the unet-underexposed study (seed ``seeds/unet-underexposed.txt``).

The study trains "the UNet structure proposed in the SID paper" (Chen et al., "Learning to See in the
Dark", CVPR 2018) with an L1 loss, Adam and StepLR(10, 0.8), on paired raw short/long exposures; it
gives no widths. The layout here follows ``shared/design/seed-methods.md`` section 1.2, checked against
``cchen156/Learning-to-See-in-the-Dark`` ``train_Sony.py``: 7,760,163 parameters in RGB mode.

Choices, all from the spec:

1. RGB mode (ours, for LOL-style sRGB frames): 3 input channels and a 1x1 32->3 output conv, instead of
   SID's 4 packed Bayer channels and 1x1 32->12 + PixelShuffle(2). Raw packing, black level and the
   exposure ratio would live outside the network, and JPEG/video frames carry no exposure metadata.
2. Every stage is 2 x [Conv3x3 (bias) -> LeakyReLU(0.2)]; MaxPool 2x2 down, ConvTranspose 2x2 stride 2
   up, then concatenation with the skip. Four pools: inputs must be multiples of 16.
3. The output is linear, as in SID; it is clamped to [0, 1] in eval mode only (the exported graph ends
   in a Clip), so training keeps the gradient of pixels that overshoot.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfusionnet.train.models.spec import ModelSpec, register

WIDTHS = (32, 64, 128, 256, 512)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """2 x [Conv3x3 (same padding, bias) -> LeakyReLU(0.2)]: one SID U-Net stage."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    """The contracting path: stage, then 4 x [MaxPool 2x2 -> stage]; returns the 4 skips and the bottom."""

    def __init__(self, cin: int = 3, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.stages = nn.ModuleList(double_conv(a, b) for a, b in zip((cin, *widths[:-1]), widths))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        return skips[:-1], skips[-1]


class Decoder(nn.Module):
    """The expansive path: 4 x [ConvTranspose 2x2 s2 -> concat skip -> stage], deepest first.

    ``fuse`` (NEID's FF modules) may replace each skip before it is concatenated; ``outputs`` then
    also returns each level's features.
    """

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        deep = widths[::-1]  # 512, 256, 128, 64, 32
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(deep, deep[1:]))
        self.stages = nn.ModuleList(double_conv(2 * b, b) for b in deep[1:])

    def forward(self, skips: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, deepest first (the last one is the full-resolution output)."""
        outs = []
        for up, stage, skip in zip(self.ups, self.stages, reversed(skips)):
            x = stage(torch.cat([up(x), skip], dim=1))
            outs.append(x)
        return outs


class UNetSID(nn.Module):
    """SID U-Net in RGB mode: ``(B, 3, H, W)`` in [0, 1], H and W multiples of 16 -> ``(B, 3, H, W)``.

    >>> UNetSID().eval()(torch.rand(1, 3, 32, 48)).shape
    torch.Size([1, 3, 32, 48])
    """

    multiple = 16

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.encoder = Encoder(3, widths)
        self.decoder = Decoder(widths)
        self.out = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.decoder(*self.encoder(x))[-1])
        return y if self.training else torch.clamp(y, 0.0, 1.0)


register(ModelSpec(
    name="unet-sid",
    build=lambda: UNetSID(),
    scale=1,
    multiple=16,
    description="SID U-Net, RGB mode (unet-underexposed seed; 7.76M params)",
))
