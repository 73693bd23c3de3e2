"""The CycleGAN generator with EMA attention and ASPP of the cyclegan-ema-aspp seed
(``seeds/cyclegan-ema-aspp.txt``: unpaired low-light enhancement, LOL 20.26 dB / 0.712).

The text fixes a CycleGAN (generators G: low -> normal and F: normal -> low, PatchGAN discriminators) whose
generator is encoder -> ASPP (1x1, global-pool and atrous 3x3 branches at rates 4, 8, 16) -> residual
blocks with EMA attention (Ouyang et al., "Efficient Multi-Scale Attention Module with Cross-Spatial
Learning", ICASSP 2023) -> transposed-conv decoder; no widths, block count or norms. The layout follows
``shared/design/seed-methods.md`` section 3.2 (13,612,707 parameters per generator), built on
``junyanz/pytorch-CycleGAN-and-pix2pix``'s ResnetGenerator (9 blocks, InstanceNorm without affine, reflect
padding) and torchvision's DeepLabV3 ASPP. Choices marked (ours) in the spec, kept:

1. ASPP: 256 channels per branch, bias-free convs -> InstanceNorm -> ReLU (torchvision uses BatchNorm);
   the pool branch has no norm (InstanceNorm of a 1x1 map is zero) and is broadcast to H x W with an
   expand instead of a bilinear resize from 1x1 (an Expand in the graph, not a Resize); Dropout dropped.
2. Each residual block is ``x + EMA(body(x))``, body = [ReflPad1, Conv3x3, IN, ReLU, ReflPad1, Conv3x3, IN].

Rewritten for export, with the same function as the reference EMA:

3. EMA's directional pools ``AdaptiveAvgPool2d((None, 1))`` / ``((1, None))`` are means over W and H:
   the pools do not export with dynamic H/W, and a fixed-size export silently bakes in one size.
4. The reference concatenates the two pooled maps, applies one 1x1 conv and splits them again at the
   runtime H and W; a 1x1 conv is per pixel, so it is applied to each map on its own (no split sizes
   that the tracer could freeze into the graph).
5. The cross-spatial weighting ``softmax(GAP(x1)) @ reshape(x2)`` is written as a softmax-weighted sum
   over the 8 channels of each group (the same numbers without reshaping to H*W or a MatMul), and
   EMA's GroupNorm(8, 8) is the equal InstanceNorm2d(8, affine=True) (one InstanceNormalization node).

The network works in [-1, 1] like every CycleGAN; the graph maps its [0, 1] input to [-1, 1] and its
tanh output back to [0, 1], so the runtime treats it like every other model. Its InstanceNorm statistics
are per frame: frames larger than the runtime's tile (1024 px) are enhanced tile by tile, each tile with
its own statistics, which can show at tile seams; run whole frames where that matters.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfusionnet.train.models.spec import ModelSpec, register


def _in(c: int) -> nn.InstanceNorm2d:
    """The reference's ``get_norm_layer('instance')``: no affine parameters, no running statistics."""
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class EMA(nn.Module):
    """Efficient multi-scale attention on ``groups`` channel groups (``factor=32`` in the reference)."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"EMA: {channels} channels do not split into {groups} groups")
        self.groups = groups
        c = channels // groups
        self.gn = nn.InstanceNorm2d(c, affine=True)  # == GroupNorm(c, c): one group per channel
        self.conv1x1 = nn.Conv2d(c, c, 1)
        self.conv3x3 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, channels, h, w = x.shape
        g = x.reshape(-1, channels // self.groups, h, w)  # (B * groups, c, H, W)
        x_h = torch.sigmoid(self.conv1x1(g.mean(dim=3, keepdim=True)))  # (.., H, 1)
        x_w = torch.sigmoid(self.conv1x1(g.mean(dim=2, keepdim=True)))  # (.., 1, W)
        x1 = self.gn(g * x_h * x_w)
        x2 = self.conv3x3(g)
        a1 = torch.softmax(x1.mean(dim=(2, 3), keepdim=True), dim=1)  # (.., c, 1, 1)
        a2 = torch.softmax(x2.mean(dim=(2, 3), keepdim=True), dim=1)
        weights = (a1 * x2 + a2 * x1).sum(dim=1, keepdim=True)  # (.., 1, H, W)
        return (g * torch.sigmoid(weights)).reshape(-1, channels, h, w)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and a global-pool branch, 1x1 projection."""

    def __init__(self, c: int = 256, rates: tuple[int, ...] = (4, 8, 16)) -> None:
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(c, c, 1, bias=False), _in(c), nn.ReLU())]
        branches += [nn.Sequential(nn.Conv2d(c, c, 3, padding=r, dilation=r, bias=False), _in(c), nn.ReLU())
                     for r in rates]
        self.convs = nn.ModuleList(branches)
        self.pool = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(c * (len(branches) + 1), c, 1, bias=False), _in(c), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True)).expand_as(x)
        return self.project(torch.cat([b(x) for b in self.convs] + [pooled], dim=1))


class ResBlockEMA(nn.Module):
    """``x + EMA(body(x))`` with the reference ResnetBlock's body (reflect padding, InstanceNorm)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), _in(c), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), _in(c))
        self.ema = EMA(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ema(self.conv_block(x))


class CycleGANEmaAspp(nn.Module):
    """Generator: stem 7x7 -> 2 stride-2 convs -> ASPP -> 9 ResBlock-EMA -> 2 transposed convs -> 7x7 + tanh.

    ``(B, 3, H, W)`` in [0, 1], H and W multiples of 4 -> ``(B, 3, H, W)`` in [0, 1].

    >>> CycleGANEmaAspp(ngf=8, blocks=1).eval()(torch.rand(1, 3, 16, 20)).shape
    torch.Size([1, 3, 16, 20])
    """

    multiple = 4

    def __init__(self, ngf: int = 64, blocks: int = 9) -> None:
        super().__init__()
        c = 4 * ngf
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), _in(ngf), nn.ReLU(),
            nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), _in(2 * ngf), nn.ReLU(),
            nn.Conv2d(2 * ngf, c, 3, stride=2, padding=1), _in(c), nn.ReLU())
        self.aspp = ASPP(c)
        self.blocks = nn.Sequential(*(ResBlockEMA(c) for _ in range(blocks)))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c, 2 * ngf, 3, stride=2, padding=1, output_padding=1), _in(2 * ngf), nn.ReLU(),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1), _in(ngf), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decoder(self.blocks(self.aspp(self.encoder(x * 2.0 - 1.0))))
        return (y + 1.0) * 0.5


class PatchDiscriminator(nn.Module):
    """The reference 70x70 PatchGAN with InstanceNorm (D_A and D_B; training only, never exported)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for cin, cout, stride in ((w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 1)):
            # InstanceNorm without affine has no shift of its own, so these convs keep their bias (reference).
            layers += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1), _in(cout), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(8 * w, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_discriminator() -> PatchDiscriminator:
    """One of the two CycleGAN discriminators (2,764,737 parameters), for an unpaired training loop."""
    return PatchDiscriminator()


register(ModelSpec(
    name="cyclegan-ema-aspp",
    build=lambda: CycleGANEmaAspp(),
    scale=1,
    multiple=4,
    discriminator=build_discriminator,
    description="CycleGAN generator with EMA attention and ASPP (cyclegan-ema-aspp seed; 13.6M params)",
))
