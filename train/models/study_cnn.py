"""The CNN enhancer and its GAN variant from the mirnet-cnn-gan-study seed
(``seeds/mirnet-cnn-gan-study.txt``: "a performance study of MIRNet, a CNN and a GAN" on LOL at 256x256).

The text describes the CNN only as Keras ``Conv2D`` down blocks d1..d5 and ``Conv2DTranspose`` up blocks
u1..u5, each up block concatenated with the matching down feature map, and a final conv to the image; it
gives no widths and no GAN layout. Both follow ``shared/design/seed-methods.md`` section 2.2(b)-(c)
(9,740,940 parameters; PatchGAN 2,768,705), all choices marked (ours) there:

1. The CNN is the common Keras LOL-notebook pattern: Conv3x3 stride 2 (d1, d2 without BatchNorm, d3-d5
   with), LeakyReLU(0.3) (Keras' default slope), ConvTranspose3x3 stride 2 + LeakyReLU, concatenation with
   d4..d1 and finally with the input image, Conv1x1 -> sigmoid. Five stride-2 convs: inputs must be
   multiples of 32. Padding is PyTorch's symmetric ``padding=1``; Keras' 'same' pads stride-2 convs only
   bottom/right, so trained Keras weights would not port as they are (none are public).
2. The GAN (``cnn-gan``) uses this CNN as its generator, so at inference it is the same network; the
   conditional 70x70 PatchGAN of pix2pix (:class:`PatchDiscriminator`, on cat[low, enhanced], BatchNorm,
   LeakyReLU 0.2) exists only for training and is never exported.
"""

from __future__ import annotations

import torch
from torch import nn

from deepfusionnet.train.models.spec import ModelSpec, register

KERAS_SLOPE = 0.3  # tf.keras LeakyReLU's default alpha


def _down(cin: int, cout: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=2, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers, nn.LeakyReLU(KERAS_SLOPE))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                         nn.LeakyReLU(KERAS_SLOPE))


class StudyCNN(nn.Module):
    """d1..d5 stride-2 convs, u1..u5 transposed convs with skips, Conv1x1 + sigmoid:
    ``(B, 3, H, W)`` in [0, 1], H and W multiples of 32 -> ``(B, 3, H, W)`` in [0, 1].

    >>> StudyCNN()(torch.rand(1, 3, 32, 64)).shape
    torch.Size([1, 3, 32, 64])
    """

    multiple = 32

    def __init__(self) -> None:
        super().__init__()
        self.d1, self.d2 = _down(3, 128, False), _down(128, 128, False)
        self.d3, self.d4, self.d5 = _down(128, 256, True), _down(256, 512, True), _down(512, 512, True)
        self.u1, self.u2, self.u3 = _up(512, 512), _up(1024, 256), _up(512, 128)
        self.u4, self.u5 = _up(256, 128), _up(256, 64)
        self.out = nn.Conv2d(64 + 3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.d1(x)
        d2 = self.d2(d1)
        d3 = self.d3(d2)
        d4 = self.d4(d3)
        y = self.u1(self.d5(d4))
        for up, skip in ((self.u2, d4), (self.u3, d3), (self.u4, d2), (self.u5, d1)):
            y = up(torch.cat([y, skip], dim=1))
        return torch.sigmoid(self.out(torch.cat([y, x], dim=1)))


class PatchDiscriminator(nn.Module):
    """pix2pix's conditional 70x70 PatchGAN (``NLayerDiscriminator``, 3 layers, BatchNorm): C64 (no norm),
    C128, C256 stride 2, C512 stride 1, Conv 512->1; 4x4 kernels, LeakyReLU 0.2. Training only.

    ``forward(low, enhanced)`` -> patch logits, 30x30 for 256x256 inputs.
    """

    def __init__(self, in_channels: int = 6, width: int = 64) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for cin, cout, stride in ((w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 1)):
            # BatchNorm has its own shift, so these convs have no bias (as in pix2pix).
            layers += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(8 * w, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, low: torch.Tensor, enhanced: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([low, enhanced], dim=1))


def build_discriminator() -> PatchDiscriminator:
    """The ``cnn-gan`` discriminator (2,768,705 parameters), for a GAN training loop."""
    return PatchDiscriminator()


register(ModelSpec(
    name="cnn",
    build=lambda: StudyCNN(),
    scale=1,
    multiple=32,
    description="the study's Keras-style CNN enhancer (mirnet-cnn-gan-study seed; 9.74M params)",
))
register(ModelSpec(
    name="cnn-gan",
    build=lambda: StudyCNN(),
    scale=1,
    multiple=32,
    description="the study's GAN: the CNN as generator (PatchGAN discriminator, training only; 9.74M params)",
))
