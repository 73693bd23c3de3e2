"""Quantization-aware training (``dfn train --qat``): every convolution fake-quantized as TensorRT runs INT8.

Explicit quantization as TensorRT executes it: symmetric INT8 (zero point 0), weights per output channel
(axis 0, scale ``max|w| / 127`` from the current weights), each convolution's input per tensor with a
fixed range calibrated on training frames before fine-tuning (``max``, a ``percentile`` of ``|x|``, or
``mse``).
Only convolutions are quantized; PReLU, BatchNorm (which follows a PReLU here, so it cannot fold into a
conv), CBAM's reductions and gates, Concat, pooling and Resize stay float: Q/DQ on those is what broke
ModelOpt's post-training INT8 of this network (benchmarks/results/int8_modelopt.md). Gradients pass the
rounding unchanged inside the range and stop outside it (the straight-through estimator of
``torch.fake_quantize_*``).

The fake quantization is PyTorch's own (``torch.fake_quantize_per_tensor_affine`` /
``..._per_channel_affine``), not NVIDIA Model Optimizer's ``modelopt.torch.quantization``. ModelOpt 0.47
works here (on the CPU, with a convs-only config; 3.62 s a training step on 2x256x256 crops at one thread
against 3.52 s in FP32; this module 4.2 s, measured in another process on the shared CPU), but its
plain install adds scipy, pulp, pydantic, omegaconf, rich, nvidia-ml-py and ninja (about 180 MB beside
torch), ``import modelopt.torch`` fails without ``requests`` and ``huggingface_hub``, which it does not
declare, its ONNX export needs ``onnx`` as well, and the graph it writes still holds float weights behind
a QuantizeLinear, so the INT8 weights step below is needed either way. This module needs nothing beyond
torch, so it runs in the ``[train]`` and CI installs (benchmarks/experiments.md, 2026-12-05 (session 27),
"Quantization-aware fine-tuning").
The ONNX side (INT8 weight initializers, every Conv checked) is :mod:`deepfusionnet.export.qat`.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from deepfusionnet.errors import DFNError

QAT_TAG = "int8-qat"  # the weights file's "quantization" metadata
AMAX = "input_amax"  # the buffer holding a convolution's calibrated input range
CALIB_METHODS = ("percentile", "max", "mse")
PERCENTILE = 99.99
HIST_BINS = 2048
QMIN, QMAX = -128, 127


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with symmetric INT8 fake quantization of its input (per tensor, range ``input_amax``)
    and its weight (per output channel, range ``max|w|``). In ONNX export the weight stays float: the export
    (:func:`deepfusionnet.export.qat.quantize_conv_weights`) writes it as an INT8 initializer."""

    enabled = True  # off while calibrating (the float network's activations are measured)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return super().forward(x)
        exporting = torch.onnx.is_in_onnx_export()
        # A Python float in export, so the scale is a constant the TensorRT gate accepts.
        scale = float(self.input_amax) / QMAX if exporting else (self.input_amax / QMAX).float()
        x = fake_quant_tensor(x, scale)
        weight = self.weight if exporting else fake_quant_weight(self.weight)
        return self._conv_forward(x, weight, self.bias)


def fake_quant_tensor(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric per-tensor INT8 fake quantization (zero point 0): QuantizeLinear + DequantizeLinear."""
    if isinstance(scale, float):
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, QMIN, QMAX)
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero, QMIN, QMAX)


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale ``max|w| / 127`` (axis 0), as the export computes it."""
    amax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
    return (amax.clamp_min(1e-12) / QMAX).float()


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-channel INT8 fake quantization of a conv weight (axis 0, zero point 0)."""
    scale = weight_scale(weight)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, QMIN, QMAX)


def quantize_convs(model: nn.Module) -> int:
    """Turn every ``nn.Conv2d`` of ``model`` into a :class:`QuantConv2d` in place (parameters kept, input
    range 1 until :func:`calibrate`); returns how many convolution modules are quantized."""
    for m in model.modules():
        if type(m) is nn.Conv2d:
            # Class swap, not a new module: parameters, sharing (CBAM's MLP runs twice) and hooks stay.
            m.__class__ = QuantConv2d
            m.register_buffer(AMAX, torch.ones((), device=m.weight.device))
    return sum(isinstance(m, QuantConv2d) for m in model.modules())


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds quantization-aware convolutions."""
    return any(isinstance(m, QuantConv2d) for m in model.modules())


def is_qat_state(state: dict, meta: dict | None = None) -> bool:
    """True for the state dict (or weights metadata) of a quantization-aware model."""
    return (meta or {}).get("quantization") == QAT_TAG or any(k.endswith("." + AMAX) for k in state)


def float_state(state: dict) -> dict:
    """``state`` without the quantizers' ranges: the float network's weights."""
    return {k: v for k, v in state.items() if not k.endswith("." + AMAX)}


@contextlib.contextmanager
def quantizers_off(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in float (calibration measures the float network's activations)."""
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    for m in convs:
        m.enabled = False
    try:
        yield
    finally:
        for m in convs:
            m.enabled = True


def _collect(model: nn.Module, frames: Iterable[torch.Tensor], fn) -> None:
    """Run ``frames`` through the float ``model`` in eval mode, calling ``fn(conv, |input|)`` per conv."""
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    hooks = [m.register_forward_pre_hook(lambda mod, args: fn(mod, args[0].detach().abs().float()))
             for m in convs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), quantizers_off(model):
            for x in frames:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _mse_range(h: torch.Tensor) -> float:
    """The range, as a fraction of the histogram's ``[0, peak]``, with the least expected squared error of
    symmetric INT8: values above it clip to it, values below round to steps of ``range / 127``."""
    h = h.double()
    centres = (torch.arange(HIST_BINS, dtype=torch.float64) + 0.5) / HIST_BINS
    cands = torch.arange(1, HIST_BINS + 1, dtype=torch.float64) / HIST_BINS  # each bin's upper edge
    clip = ((centres[None, :] - cands[:, None]).clamp_min(0) ** 2 * h[None, :]).sum(1)
    rounding = (cands / QMAX) ** 2 / 12 * (h[None, :] * (centres[None, :] <= cands[:, None])).sum(1)
    return float(cands[int(torch.argmin(clip + rounding))])


def calibrate(model: nn.Module, frames: list[torch.Tensor], method: str = "percentile",
              percentile: float = PERCENTILE) -> dict[str, float]:
    """Set every :class:`QuantConv2d`'s input range from ``frames`` (``(1, 3, H, W)`` tensors on the
    model's device); returns ``{module name: range}``.

    ``max``: the largest ``|x|`` seen. ``percentile``: the ``percentile``-th of ``|x|`` over all frames, from
    a 2048-bin histogram on ``[0, max]`` (a second pass), which clips rare peaks to keep resolution.
    ``mse``: the range that minimises the expected squared quantization error over that histogram
    (clipping above it, rounding below it).
    """
    if method not in CALIB_METHODS:
        raise DFNError(f"--qat-calib must be one of {', '.join(CALIB_METHODS)}")
    if not frames:
        raise DFNError("QAT calibration needs at least one training frame")
    peak: dict[nn.Module, torch.Tensor] = {}
    _collect(model, frames, lambda m, a: peak.__setitem__(m, torch.maximum(peak.get(m, a.max()), a.max())))
    amax = dict(peak)
    hist: dict[nn.Module, torch.Tensor] = {}
    if method != "max":

        def add(m, a):  # a conv's input range is [0, peak]: histc's fixed bins cover it exactly
            h = torch.histc(a, bins=HIST_BINS, min=0.0, max=float(peak[m]))
            hist[m] = hist[m] + h if m in hist else h

        _collect(model, frames, add)
    for m, h in hist.items():
        if method == "mse":
            amax[m] = peak[m] * _mse_range(h)
            continue
        cdf = torch.cumsum(h.double(), 0) / h.sum().double()
        k = int(torch.searchsorted(cdf, torch.tensor(percentile / 100, dtype=torch.float64)))
        amax[m] = peak[m] * min(k + 1, HIST_BINS) / HIST_BINS  # the bin's upper edge
    names = {m: n for n, m in model.named_modules()}
    out = {}
    for m, value in amax.items():
        value = max(float(value), 1e-6)  # an all-zero input (dead channel) still needs a positive scale
        m.input_amax.fill_(value)
        out[names[m]] = value
    return out
