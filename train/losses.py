"""The paper's hybrid loss: MSE + lambda * (1 - SSIM), SSIM Gaussian 11x11, sigma 1.5, data range 1."""

from __future__ import annotations

import torch


def mse_ssim_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    from pytorch_msssim import ssim

    pred, target = pred.float(), target.float()
    mse = torch.mean((pred - target) ** 2)
    s = ssim(pred, target, data_range=1.0, size_average=True, win_size=11, win_sigma=1.5)
    loss = mse + ssim_weight * (1.0 - s)
    return loss, {"mse": float(mse.detach()), "ssim": float(s.detach())}
