"""NEID, the two-stream network of the neid-two-stream seed (``seeds/neid-two-stream.txt``) that enhances a
low-light image and super-resolves it x2 in one pass (LOL 22.83 dB / 0.78 on x0.5 bicubic inputs).

The text fixes a Light Enhancement (LE) U-Net codec ending in a sub-pixel (PixelShuffle) x2 upsampler, a
Detail Refinement (DR) super-resolution branch whose encoder is shared with LE ("dual codecs whose encoders
share weights"), and Feature Fusing (FF) channel attention guided by the DR features, whose weighted sum
with the LE features feeds the LE decoder; no widths and no public code. The layout follows
``shared/design/seed-methods.md`` section 4.2 (10,848,500 parameters in training, 10,845,032 at
inference), every choice marked (ours) there:

1. Widths and depth follow the SID U-Net (32..512, 4 max-pools): the low-resolution input must be a
   multiple of 16; the output is twice the input size (registered with scale 2, like the SR model).
2. FF sits at each of the 4 skips: z = LeakyReLU(1x1 C->max(C/8, 4) of the mean of the DR decoder's
   features d_k), a per-channel softmax over the pair [1x1 z->C, 1x1 z->C], and e'_k = a1*e_k + a2*d_k
   replaces the encoder skip e_k in the LE decoder.
3. The LE head is Conv3x3 32->12 -> PixelShuffle(2) with a linear output, clamped to [0, 1] in eval mode
   only (a Clip in the graph). The DR head has the same layout and is used in training only: the DR
   *decoder* must still run at inference because FF reads its features, so inference costs 19.4 G MACs
   for a 600x400 output, not the 11.9 G of an LE-only U-Net. ``forward`` returns the LE output (the
   exported graph holds no DR head); :meth:`NEID.forward_train` returns both.
4. The global mean of FF is a reduction (ReduceMean), so the graph runs at any size that is a multiple
   of 16; PixelShuffle exports as DepthToSpace (CRD), which TensorRT imports.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfusionnet.train.models.spec import ModelSpec, register
from deepfusionnet.train.models.unet_sid import WIDTHS, Decoder, Encoder


class FeatureFusing(nn.Module):
    """FF: DR-guided channel attention choosing, per channel, between the encoder skip and the DR features."""

    def __init__(self, c: int) -> None:
        super().__init__()
        d = max(c // 8, 4)
        self.squeeze = nn.Sequential(nn.Conv2d(c, d, 1), nn.LeakyReLU(0.2))
        self.to_skip = nn.Conv2d(d, c, 1)
        self.to_detail = nn.Conv2d(d, c, 1)

    def forward(self, skip: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        z = self.squeeze(detail.mean(dim=(2, 3), keepdim=True))
        a = torch.softmax(torch.stack([self.to_skip(z), self.to_detail(z)], dim=0), dim=0)
        return a[0] * skip + a[1] * detail


def subpixel_head(c: int) -> nn.Sequential:
    """Conv3x3 c -> 12 -> PixelShuffle(2): RGB at twice the resolution (ESPCN's sub-pixel convolution)."""
    return nn.Sequential(nn.Conv2d(c, 12, 3, padding=1), nn.PixelShuffle(2))


class NEID(nn.Module):
    """Shared encoder -> DR decoder, FF at every skip, LE decoder -> sub-pixel x2 head.

    ``(B, 3, H, W)`` in [0, 1], H and W multiples of 16 -> ``(B, 3, 2H, 2W)`` in [0, 1] (eval mode).

    >>> NEID().eval()(torch.rand(1, 3, 16, 32)).shape
    torch.Size([1, 3, 32, 64])
    """

    multiple = 16

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.encoder = Encoder(3, widths)
        self.dr_decoder = Decoder(widths)
        self.ff = nn.ModuleList(FeatureFusing(c) for c in widths[-2::-1])  # 256, 128, 64, 32
        self.le_decoder = Decoder(widths)
        self.le_head = subpixel_head(widths[0])
        self.dr_head = subpixel_head(widths[0])  # training only

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips, bottom = self.encoder(x)
        details = self.dr_decoder(skips, bottom)  # deepest first, like ``reversed(skips)``
        fused = [ff(skip, d) for ff, skip, d in zip(self.ff, reversed(skips), details)]
        le = self.le_decoder(fused[::-1], bottom)[-1]
        return le, details[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.le_head(self._features(x)[0])
        return y if self.training else torch.clamp(y, 0.0, 1.0)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LE output, DR output)``, both x2 and linear: LE against the normal-light image (Huber, colour
        loss), DR against the x2 low-light image (MSE)."""
        le, detail = self._features(x)
        return self.le_head(le), self.dr_head(detail)


register(ModelSpec(
    name="neid",
    build=lambda: NEID(),
    scale=2,
    multiple=16,
    task="enhance-sr",
    description="NEID two-stream enhancement + x2 SR (neid-two-stream seed; 10.85M params)",
))
