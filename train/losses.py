"""The paper's hybrid loss: pixel term + lambda * (1 - SSIM), SSIM Gaussian 11x11, sigma 1.5, data range 1."""

from __future__ import annotations

import torch

PIXEL_LOSSES = ("mse", "charbonnier", "l1")
CHARBONNIER_EPS = 1e-3  # as in MPRNet/Restormer: about L1 above a few grey levels, smooth at 0


def hybrid_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 1.0,
                pixel: str = "mse") -> tuple[torch.Tensor, dict]:
    """``pixel(pred, target) + ssim_weight * (1 - SSIM)``, pixel: the paper's MSE or Charbonnier (robust L1).

    Charbonnier grows linearly with the error, so a frame whose exposure the content cannot predict
    (LOL's ground truth varies scene to scene) pulls on the weights no harder than a well-exposed one.
    """
    from pytorch_msssim import ssim

    pred, target = pred.float(), target.float()
    diff2 = (pred - target) ** 2
    mse = torch.mean(diff2)
    if pixel == "mse":
        term = mse
    elif pixel == "charbonnier":
        term = torch.mean(torch.sqrt(diff2 + CHARBONNIER_EPS**2))
    elif pixel == "l1":  # the seed U-Nets' loss (unet-sid, the study's CNN)
        term = torch.mean(torch.abs(pred - target))
    else:
        raise ValueError(f"unknown pixel loss {pixel!r}; choose one of {PIXEL_LOSSES}")
    s = ssim(pred, target, data_range=1.0, size_average=True, win_size=11, win_sigma=1.5)
    loss = term + ssim_weight * (1.0 - s)
    # Parts as tensors: float() here would make every training step wait for the GPU.
    return loss, {"mse": mse.detach(), "ssim": s.detach()}
