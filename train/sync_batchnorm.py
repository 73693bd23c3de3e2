"""BatchNorm over the global batch of a multi-process run, on GPUs and on CPUs.

Under DDP each process normalises its own share of the batch unless BatchNorm is synchronised, so
a 2-process run would not train the model a 1-process run trains. ``torch.nn.SyncBatchNorm`` does
that for CUDA tensors only (it refuses CPU input), so CPU processes under gloo get
:class:`GlooSyncBatchNorm`: the same statistics, reduced with differentiable all-reduces (the functional
collectives, which torch 2.13 recommends over the deprecated ``torch.distributed.nn.functional``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_reduce


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch of every process in ``group``.

    Two passes (sum, then the sum of squared deviations), as a single-process batch norm computes
    them, so a 2-process run and a 1-process run of the same global batch agree to float rounding.
    Gradients flow through the all-reduces (their backward is an all-reduce): each process gets the gradient
    of the statistics summed over every process's loss, as DDP's average then expects.
    State dict keys are BatchNorm2d's; in eval mode it is plain BatchNorm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, group=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _synchronised(self) -> bool:
        return self.training and dist.is_available() and dist.is_initialized() and \
            dist.get_world_size(self.group) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._synchronised():
            return super().forward(input)
        x = input.float()  # statistics in FP32, also under autocast
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        dist.all_reduce(count, group=self.group)
        n = float(count)
        mean = all_reduce(x.sum(dims), "sum", self.group) / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims), "sum", self.group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * (n / max(n - 1.0, 1.0)))
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var, alpha=factor)


def _convert_for_gloo(module: nn.Module, group) -> nn.Module:
    """``module`` with every BatchNorm swapped for :class:`GlooSyncBatchNorm` sharing its tensors."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the optimizer's parameters, not copies
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_for_gloo(child, group))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with BatchNorm synchronised over the process group: ``torch.nn.SyncBatchNorm`` on CUDA,
    :class:`GlooSyncBatchNorm` on the CPU. The layers keep their parameters, buffers and state dict keys."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # A group of its own: its collectives then never interleave with DDP's gradient buckets.
    return _convert_for_gloo(model, dist.new_group(backend="gloo"))
