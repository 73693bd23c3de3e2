"""MIRNet (Zamir et al., "Learning Enriched Features for Real Image Restoration and Enhancement", ECCV
2020) and MIRNet-v2 (Zamir et al., "Learning Enriched Features for Fast Image Restoration and
Enhancement", TPAMI 2022), the MIRNet of the mirnet-cnn-gan-study seed (``seeds/mirnet-cnn-gan-study.txt``).

The study names MIRNet only; both layouts follow ``shared/design/seed-methods.md`` section 2.2(a), which
was checked against the official code (``swz30/MIRNet`` ``networks/MIRNet_model.py``: 31,787,436
parameters; ``swz30/MIRNetv2`` ``basicsr/models/archs/mirnet_v2_arch.py`` with the LOL config:
5,858,560). Parameter and buffer names follow the official code, so its checkpoints load.

What differs from the official code, all without changing the function on inputs that are multiples of 4
(the registered input multiple; the runtime pads to it):

1. Global average pools (SKFF, channel attention) are means over H and W, and the channel max/mean of
   the spatial attention are reductions: ``AdaptiveAvgPool2d`` would not export with dynamic H/W.
2. SKFF stacks its inputs on a new axis instead of reshaping a concatenation with the input's runtime
   shape: the same softmax across the inputs, with no shape arithmetic in the graph.
3. MIRNet-v2's global-context block sums ``x * softmax(mask)`` over the pixels instead of a MatMul on
   reshaped tensors (the same weighted sum), and its down-sampling AvgPool2d(2) drops ``ceil_mode=True,
   count_include_pad=False``, which only matter for odd sizes.
4. MIRNet (v1) keeps the official code's quirks, because its parameter count and checkpoints depend on
   them: one PReLU is shared by every DAU of a network (the official code's default argument makes it one
   instance for the whole process; here it is one per network), and each MRB uses the same DAU instance
   in both of its columns. ``parameters()`` counts the shared PReLU once: 31,787,419, 17 below the
   spec's 31,787,436, which counted one per DAU.

The output is the input plus a residual and is clamped to [0, 1] in eval mode only (a Clip at the end
of the exported graph). The anti-aliased down-sampling pads with reflection, which TensorRT imports
(``Pad`` mode ``reflect``); the up-sampling is bilinear with ``align_corners=False`` (Resize
half_pixel), which ONNX Runtime, OpenVINO and TensorRT agree on.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deepfusionnet.train.models.spec import ModelSpec, register


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Upsample2x(nn.Module):
    """Bilinear x2 with ``align_corners=False`` (no parameters; keeps the official ``Sequential`` indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample2x(x)


class SKFF(nn.Module):
    """Selective kernel feature fusion: sum the n inputs, squeeze to a descriptor, one 1x1 per input,
    softmax across the inputs per channel, weighted sum."""

    def __init__(self, channels: int, height: int, reduction: int = 8,
                 act: Callable[[], nn.Module] = nn.PReLU) -> None:
        super().__init__()
        d = max(int(channels / reduction), 4)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, d, 1, bias=False), act())
        self.fcs = nn.ModuleList(nn.Conv2d(d, channels, 1, bias=False) for _ in range(height))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(feats, dim=1)  # (B, n, C, H, W)
        z = self.conv_du(stacked.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        attention = torch.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1), dim=1)  # (B, n, C, 1, 1)
        return (stacked * attention).sum(dim=1)


# ---- MIRNet (v1) -------------------------------------------------------------------------------------


class AntiAliasDown(nn.Module):
    """Blur with the fixed binomial [1, 2, 1]^2 / 16 (reflect pad 1), then keep every second pixel: the
    official ``downsamp`` (its ``filt`` buffer is kept, so official checkpoints load)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(padded, self.filt, stride=2, groups=self.filt.shape[0])


class ResidualDownSample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.top = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.PReLU(),
                                 nn.Conv2d(c, c, 3, padding=1, bias=False), nn.PReLU(), AntiAliasDown(c),
                                 nn.Conv2d(c, 2 * c, 1, bias=False))
        self.bot = nn.Sequential(AntiAliasDown(c), nn.Conv2d(c, 2 * c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class ResidualUpSample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.top = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.PReLU(),
                                 nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1,
                                                    bias=False),
                                 nn.PReLU(), nn.Conv2d(c, c // 2, 1, bias=False))
        self.bot = nn.Sequential(Upsample2x(), nn.Conv2d(c, c // 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class Resample(nn.Module):
    """``log2(factor)`` residual down- (channels x2 each) or up-samplings (channels /2 each)."""

    def __init__(self, channels: int, factor: int, up: bool) -> None:
        super().__init__()
        steps = []
        for _ in range(factor.bit_length() - 1):
            steps.append(ResidualUpSample(channels) if up else ResidualDownSample(channels))
            channels = channels // 2 if up else channels * 2
        self.body = nn.Sequential(*steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DAU(nn.Module):
    """Dual attention unit: Conv3x3 -> PReLU (shared) -> Conv3x3, then spatial attention (channel max and
    mean -> Conv5x5 -> sigmoid) and channel attention (mean -> 1x1 C/8 -> ReLU -> 1x1 -> sigmoid), fused
    by a 1x1 and added to the input."""

    def __init__(self, c: int, act: nn.Module, reduction: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), act,
                                  nn.Conv2d(c, c, 3, padding=1, bias=False))
        self.SA = nn.Module()
        self.SA.spatial = nn.Module()  # official name: SA.spatial.conv
        self.SA.spatial.conv = nn.Conv2d(2, 1, 5, padding=2, bias=False)
        self.CA = nn.Module()
        self.CA.conv_du = nn.Sequential(nn.Conv2d(c, c // reduction, 1, bias=False), nn.ReLU(),
                                        nn.Conv2d(c // reduction, c, 1, bias=False), nn.Sigmoid())
        self.conv1x1 = nn.Conv2d(2 * c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.body(x)
        pooled = torch.cat([r.amax(dim=1, keepdim=True), r.mean(dim=1, keepdim=True)], dim=1)
        sa = r * torch.sigmoid(self.SA.spatial.conv(pooled))
        ca = r * self.CA.conv_du(r.mean(dim=(2, 3), keepdim=True))
        return self.conv1x1(torch.cat([sa, ca], dim=1)) + x


class MRB(nn.Module):
    """Multi-scale residual block (the official MSRB): 3 streams (C, 2C, 4C at 1, 1/2, 1/4 resolution),
    2 columns of DAUs joined by SKFF across the streams, streams fused back at full resolution."""

    def __init__(self, c: int, act: nn.Module, height: int = 3, width: int = 2) -> None:
        super().__init__()
        self.height, self.width = height, width
        feats = [c * 2**i for i in range(height)]
        # One DAU per stream, repeated over the columns (the official ``[DAU(...)] * width``).
        self.blocks = nn.ModuleList(nn.ModuleList([DAU(f, act)] * width) for f in feats)
        scales = [2**i for i in range(1, height)][::-1]
        self.down = nn.ModuleDict({f"{f}_{s}": Resample(f, s, up=False)
                                   for i, f in enumerate(feats) for s in scales[i:]})
        self.up = nn.ModuleDict({f"{f}_{s}": Resample(f, s, up=True)
                                 for i, f in enumerate(feats[::-1]) for s in scales[i:]})
        self.last_up = nn.ModuleDict({f"{i}": Resample(feats[i], 2**i, up=True) for i in range(1, height)})
        self.conv_out = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.selective_kernel = nn.ModuleList(SKFF(f, height) for f in feats)

    def _move(self, t: torch.Tensor, to: int, frm: int) -> torch.Tensor:
        if to == frm:
            return t
        key = f"{t.shape[1]}_{2 ** abs(to - frm)}"
        return self.up[key](t) if to < frm else self.down[key](t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams, t = [], x
        for j in range(self.height):
            t = self.blocks[j][0](t if j == 0 else self.down[f"{t.shape[1]}_2"](t))
            streams.append(t)
        for i in range(1, self.width):
            fused = [self.selective_kernel[j]([self._move(streams[k], j, k) for k in range(self.height)])
                     for j in range(self.height)]
            streams = [self.blocks[j][i](fused[j]) for j in range(self.height)]
        out = [streams[0]] + [self.last_up[f"{k}"](streams[k]) for k in range(1, self.height)]
        return self.conv_out(self.selective_kernel[0](out)) + x


class RRG(nn.Module):
    """Recursive residual group: n blocks -> Conv3x3, plus the group's input."""

    def __init__(self, blocks: list[nn.Module], c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*blocks, nn.Conv2d(c, c, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class MIRNet(nn.Module):
    """MIRNet v1 (n_feat 64, 3 RRG x 2 MRB, height 3, width 2): ``(B, 3, H, W)`` -> same shape,
    H and W multiples of 4.

    >>> MIRNet(n_feat=8, n_rrg=1, n_mrb=1).eval()(torch.rand(1, 3, 16, 20)).shape
    torch.Size([1, 3, 16, 20])
    """

    multiple = 4

    def __init__(self, n_feat: int = 64, n_rrg: int = 3, n_mrb: int = 2, height: int = 3,
                 width: int = 2) -> None:
        super().__init__()
        act = nn.PReLU()  # shared by every DAU, as in the official code (see the module docstring)
        self.conv_in = nn.Conv2d(3, n_feat, 3, padding=1, bias=False)
        self.body = nn.Sequential(*(RRG([MRB(n_feat, act, height, width) for _ in range(n_mrb)], n_feat)
                                    for _ in range(n_rrg)))
        self.conv_out = nn.Conv2d(n_feat, 3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_out(self.body(self.conv_in(x))) + x
        return y if self.training else torch.clamp(y, 0.0, 1.0)


# ---- MIRNet-v2 ---------------------------------------------------------------------------------------


class ContextBlock(nn.Module):
    """Global context (GCNet): a softmax over the pixels of a 1x1 mask weights a sum of the features,
    transformed by 1x1 -> LeakyReLU -> 1x1 and added to every pixel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(c, 1, 1, bias=False)
        self.channel_add_conv = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.LeakyReLU(0.2),
                                              nn.Conv2d(c, c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.conv_mask(x).flatten(2), dim=2)  # (B, 1, HW)
        context = (x.flatten(2) * weights).sum(dim=2)[..., None, None]  # (B, C, 1, 1)
        return x + self.channel_add_conv(context)


class RCB(nn.Module):
    """Residual context block: grouped Conv3x3 -> LeakyReLU -> grouped Conv3x3 -> context -> LeakyReLU,
    plus the input."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False, groups=groups), nn.LeakyReLU(0.2),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False, groups=groups))
        self.act = nn.LeakyReLU(0.2)
        self.gcnet = ContextBlock(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.gcnet(self.body(x))) + x


class _Down(nn.Module):  # official ``Down``: AvgPool 2x2 -> 1x1 C -> C * factor
    def __init__(self, c: int, factor: float) -> None:
        super().__init__()
        self.bot = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c, int(c * factor), 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bot(x)


class _Up(nn.Module):  # official ``Up``: 1x1 C -> C / factor -> bilinear x2
    def __init__(self, c: int, factor: float) -> None:
        super().__init__()
        self.bot = nn.Sequential(nn.Conv2d(c, int(c // factor), 1, bias=False), Upsample2x())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bot(x)


class _Steps(nn.Module):
    """The official ``DownSample``/``UpSample`` wrapper: one step in ``body`` (kept for checkpoint names)."""

    def __init__(self, step: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MRBv2(nn.Module):
    """MIRNet-v2's MRB: 3 streams (C, 1.5C, 2.25C), RCBs shared by both columns, 2-input SKFF."""

    def __init__(self, c: int, factor: float, groups: int) -> None:
        super().__init__()
        c1, c2 = int(c * factor), int(c * factor**2)
        self.dau_top, self.dau_mid, self.dau_bot = RCB(c, groups), RCB(c1, groups), RCB(c2, groups)
        self.down2 = _Steps(_Down(c, factor))
        self.down4 = nn.Sequential(_Steps(_Down(c, factor)), _Steps(_Down(c1, factor)))
        self.up21_1, self.up21_2 = _Steps(_Up(c1, factor)), _Steps(_Up(c1, factor))
        self.up32_1, self.up32_2 = _Steps(_Up(c2, factor)), _Steps(_Up(c2, factor))
        self.conv_out = nn.Conv2d(c, c, 1, bias=False)
        self.skff_top = SKFF(c, 2, act=lambda: nn.LeakyReLU(0.2))
        self.skff_mid = SKFF(c1, 2, act=lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, mid, bot = x, self.down2(x), self.down4(x)
        top, mid, bot = self.dau_top(top), self.dau_mid(mid), self.dau_bot(bot)
        mid = self.skff_mid([mid, self.up32_1(bot)])
        top = self.skff_top([top, self.up21_1(mid)])
        top, mid, bot = self.dau_top(top), self.dau_mid(mid), self.dau_bot(bot)
        mid = self.skff_mid([mid, self.up32_2(bot)])
        top = self.skff_top([top, self.up21_2(mid)])
        return self.conv_out(top) + x


class MIRNetV2(nn.Module):
    """MIRNet-v2 (n_feat 80, channel factor 1.5, 4 RRG with groups 1, 2, 4, 4, 2 MRB each):
    ``(B, 3, H, W)`` -> same shape, H and W multiples of 4.

    >>> MIRNetV2(n_feat=8, groups=(1,)).eval()(torch.rand(1, 3, 16, 20)).shape
    torch.Size([1, 3, 16, 20])
    """

    multiple = 4

    def __init__(self, n_feat: int = 80, factor: float = 1.5, groups: tuple[int, ...] = (1, 2, 4, 4),
                 n_mrb: int = 2) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, n_feat, 3, padding=1, bias=False)
        self.body = nn.Sequential(*(RRG([MRBv2(n_feat, factor, g) for _ in range(n_mrb)], n_feat)
                                    for g in groups))
        self.conv_out = nn.Conv2d(n_feat, 3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_out(self.body(self.conv_in(x))) + x
        return y if self.training else torch.clamp(y, 0.0, 1.0)


register(ModelSpec(
    name="mirnet",
    build=lambda: MIRNet(),
    scale=1,
    multiple=4,
    description="MIRNet v1 (mirnet-cnn-gan-study seed; 31.8M params, 1.76 TMAC at 600x400)",
))
register(ModelSpec(
    name="mirnet-v2",
    build=lambda: MIRNetV2(),
    scale=1,
    multiple=4,
    description="MIRNet-v2, LOL configuration (mirnet-cnn-gan-study seed; 5.86M params)",
))
