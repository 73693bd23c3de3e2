"""DeepFusionNet (Çalışkan & Koruk, 2025, arXiv 2510.10122): low-light enhancement and 2x SR.

The paper gives the block types but no channel counts; this follows the layer-by-layer spec in
``shared/design/deepfusionnet-spec.md``, fitted to the paper's parameter counts
(2,597,942 enhancement / 109,546 SR; ours: 2,595,463 / 109,520).

Choices the paper leaves open, decided once here:

1. Head: one depthwise 3x3 conv per branch (GhostConv style), not one shared DW on cat(a, b).
2. Depth: three 2x max-pools; the bottleneck works on the deepest encoder stage at 1/8 resolution,
   so inputs must be a multiple of 8 (600x400 needs no padding). The runtime pads other sizes.
3. "ResNet18-style" stages have no identity add: the paper contrasts ResNet's additive skip with
   U-Net's concatenation, and an add would need 1x1 projections the parameter count has no room for.
4. BatchNorm sits after each conv pair and before CBAM, in the decoder too.
5. PReLU has one learnable slope per layer (PyTorch's default); CBAM reduction 16, MLP without bias.
6. Upsampling is bilinear with ``align_corners=False`` ("Upsample for speed", and it exports to a
   Resize that ONNX Runtime, OpenVINO and TensorRT agree on); the output is a sigmoid in [0, 1].
7. SR: a bilinear x2 upsample after the last CBAM, then Conv3x3(8->32)+PReLU, Conv3x3(32->3), sigmoid
   (``deepfusionnet-sr-paper``). The shipped ``deepfusionnet-sr`` departs from the paper in one place:
   the last conv's output is added to the bilinear x2 upsample of the input and clamped to [0, 1]
   instead of passed through a sigmoid (no parameters added). Without that skip the network has to
   rebuild every colour through its bottleneck: on its validation pairs 25-60 % of its squared error
   was a low-frequency colour shift, and it scored 2 dB below bicubic (29.3 vs 31.4 dB).
"""

from __future__ import annotations

import torch
from torch import nn

from deepfusionnet.train.models.blocks import DenseBottleneck, GhostHead, Stage, conv_prelu, upsample2x
from deepfusionnet.train.models.spec import ModelSpec, register


class DeepFusionNet(nn.Module):
    """U-Net-like enhancer: GhostHead -> stem -> 3 pooled encoder stages -> dense bottleneck ->
    3 decoder stages with concatenated skips -> 1x1 conv + sigmoid (or the SR block).

    Input ``(B, 3, H, W)`` RGB in [0, 1] with H, W multiples of 8; output ``(B, 3, H, W)`` or
    ``(B, 3, 2H, 2W)`` when ``upscale=2``.

    >>> DeepFusionNet()(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """

    multiple = 8

    def __init__(
        self,
        head: int = 8,
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
        bottleneck: tuple[int, int, int] = (64, 128, 3),
        upscale: int = 1,
        sr_width: int = 32,
        sr_skip: bool = False,
    ) -> None:
        super().__init__()
        if upscale not in (1, 2):
            raise ValueError("upscale must be 1 or 2")
        self.upscale = upscale
        w0, w1, w2, w3 = widths
        self.head = GhostHead(3, head)
        self.stem = Stage(self.head.out_channels, w0, convs=1)
        self.pool = nn.MaxPool2d(2)
        self.enc1 = Stage(w0, w1)
        self.enc2 = Stage(w1, w2)
        self.enc3 = Stage(w2, w3)
        self.bottleneck = DenseBottleneck(w3, *bottleneck)
        self.dec1 = Stage(self.bottleneck.out_channels + w2, w2)
        self.dec2 = Stage(w2 + w1, w1)
        self.dec3 = Stage(w1 + w0, w0)
        if upscale == 1:
            self.tail = nn.Conv2d(w0, 3, 1)
        else:
            self.tail = nn.Sequential(conv_prelu(w0, sr_width), nn.Conv2d(sr_width, 3, 3, padding=1))
        self.has_skip = upscale == 2 and sr_skip
        if self.has_skip:
            nn.init.zeros_(self.tail[-1].weight)  # starts as the bilinear upsample
            nn.init.zeros_(self.tail[-1].bias)
            # Not used in forward: it marks weight files of this variant, whose parameters have the same
            # names and shapes as the paper's block (train.weights.load_model reads files without it so).
            self.register_buffer("sr_skip", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stem(self.head(x))
        s2 = self.enc1(self.pool(s1))
        s3 = self.enc2(self.pool(s2))
        y = self.bottleneck(self.enc3(self.pool(s3)))
        y = self.dec1(torch.cat([upsample2x(y), s3], dim=1))
        y = self.dec2(torch.cat([upsample2x(y), s2], dim=1))
        y = self.dec3(torch.cat([upsample2x(y), s1], dim=1))
        if self.upscale == 2:
            y = upsample2x(y)
        if self.has_skip:  # the network adds detail to the bilinear upsample of its input
            return torch.clamp(upsample2x(x) + self.tail(y), 0.0, 1.0)
        return torch.sigmoid(self.tail(y))


register(ModelSpec(
    name="deepfusionnet",
    build=lambda: DeepFusionNet(),
    scale=1,
    multiple=8,
    description="DeepFusionNet low-light enhancer (2.6M params)",
))
register(ModelSpec(
    name="deepfusionnet-sr",
    build=lambda: DeepFusionNet(head=4, widths=(8, 16, 24, 48), bottleneck=(24, 24, 3), upscale=2, sr_skip=True),
    scale=2,
    multiple=8,
    description="DeepFusionNet 2x super-resolution (110K params), detail added to a bilinear upsample",
))
register(ModelSpec(
    name="deepfusionnet-sr-paper",
    build=lambda: DeepFusionNet(head=4, widths=(8, 16, 24, 48), bottleneck=(24, 24, 3), upscale=2),
    scale=2,
    multiple=8,
    description="DeepFusionNet 2x super-resolution as in the paper (sigmoid output, no skip; 110K params)",
))
