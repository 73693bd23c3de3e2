"""Quantization-aware training (``dfn train --qat``): every convolution fake-quantized as TensorRT runs INT8.

Explicit quantization as TensorRT executes it: symmetric INT8 (zero point 0), weights per output channel
(axis 0, scale ``max|w| / 127`` from the current weights), each convolution's input per tensor with a
range calibrated on training frames before fine-tuning (per-frame peaks by default, see
:data:`FRAME_PERCENTILE`; or pooled ``max``, ``percentile``, ``mse``), fixed or trained with the weights
(``learn_ranges``, LSQ). The convolutions that read the image quantize it centred on 0.5 after their zero
padding (``IMAGE_CENTRE``): in the graph a Pad and a Sub before the Q/DQ and a bias that adds the
centre back, so the 8-bit image keeps its resolution.
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
OFFSET = "input_offset"  # the convolutions that read the image: subtracted before quantizing (IMAGE_CENTRE)
# Symmetric INT8 spends half its codes on negative values an image never has: centred on 0.5, its [0, 1]
# input keeps 255 steps of 1/254 instead of 128 of 1/127 (on the SR model, the first two convs' INT8 input
# cost 0.058 dB of validation PSNR uncentred, 0.002 centred).
IMAGE_CENTRE = 0.5
CALIB_METHODS = ("frames", "percentile", "max", "mse")
# "frames": each conv's range is this percentile, over the calibration frames, of each frame's own peak |x|.
# The network's activations scale with the scene: a dark frame's peaks in the bottleneck sit up to 400x
# below a bright one's, so a range from all frames pooled (max, or a percentile of every value) quantizes
# a dark frame's deep activations to zero. Shipped enhancer, no fine-tuning, 40 held-out pairs: pooled
# 99.99th percentile -1.2 dB against FP32; per-frame peaks, 75th percentile +0.06 dB (median -0.45).
FRAME_PERCENTILE = 75.0

RANGE_MODES = ("fixed", "learned")
# --qat-ranges learned: each range's learning rate is this multiple of the weights' rate times its own
# calibrated value, so every range moves by about the same fraction per step whatever its size (they
# span 0.3 to 4000 on the enhancer): at --lr 3e-5, up to 0.1 % a step.
RANGE_LR_SCALE = 30.0
PERCENTILE = 99.99
HIST_BINS = 2048
QMIN, QMAX = -128, 127


def default_calibration(task: str) -> str:
    """``--qat-calib auto``: ``frames`` for an enhancer, whose inputs range from near black to lamps;
    ``percentile`` for SR, whose inputs are normal-light (measured on deepfusionnet-sr's 40 held-out pairs
    after the same fine-tuning: 33.50 dB pooled, 33.46 per-frame; FP32 33.54)."""
    return "frames" if task == "enhance" else "percentile"


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with symmetric INT8 fake quantization of its input (per tensor, range ``input_amax``)
    and its weight (per output channel, range ``max|w|``). In ONNX export the weight stays float: the export
    (:func:`deepfusionnet.export.qat.quantize_conv_weights`) writes it as an INT8 initializer."""

    enabled = True  # off while calibrating (the float network's activations are measured)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return super().forward(x)
        exporting = torch.onnx.is_in_onnx_export()
        centred = hasattr(self, OFFSET)  # a tensor op, not a Python float: no device sync per forward
        padding, bias = self.padding, self.bias
        if centred:
            # Zero-pad the image first, then centre: the border sees the zeros the float conv sees (centring
            # after the conv's own padding made the border 0.5 and cost the SR model 0.4 dB).
            ph, pw = self.padding
            x = nn.functional.pad(x, (pw, pw, ph, ph)) - self.input_offset
            padding, bias = (0, 0), self._centred_bias(exporting)
        if exporting:  # a Python float, so the scale is a constant the TensorRT gate accepts
            x = fake_quant_tensor(x, float(self.input_amax) / QMAX)
        elif self.input_amax.requires_grad:
            x = fake_quant_learned(x, self.input_amax)
        else:
            x = fake_quant_tensor(x, (self.input_amax / QMAX).float())
        weight = self.weight if exporting else fake_quant_weight(self.weight)
        return nn.functional.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def _centred_bias(self, exporting: bool) -> torch.Tensor:
        """The bias that adds the centre back: conv(x - c) + c * sum(w) = conv(x), the INT8 weights' sum."""
        shift = self.input_offset * fake_quant_weight(self.weight).sum(dim=(1, 2, 3))
        if exporting:  # a constant initializer in the graph, not ops on the weights
            shift = torch.tensor(shift.detach().cpu().tolist(), dtype=shift.dtype, device=shift.device)
        return shift if self.bias is None else self.bias + shift


def fake_quant_tensor(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric per-tensor INT8 fake quantization (zero point 0): QuantizeLinear + DequantizeLinear."""
    if isinstance(scale, float):
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, QMIN, QMAX)
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero, QMIN, QMAX)


def fake_quant_learned(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """:func:`fake_quant_tensor` with a trainable range (LSQ, Esser et al. 2020): the gradient reaches
    ``amax`` as well as ``x``. The op is the one ``torch.ao.quantization._LearnableFakeQuantize`` calls."""
    scale = (amax.clamp_min(1e-6) / QMAX).reshape(1).float()
    zero = torch.zeros(1, device=x.device)
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, QMIN, QMAX, 1.0)


def learn_ranges(model: nn.Module) -> list[dict]:
    """Make every :class:`QuantConv2d`'s input range trainable (a parameter under the same state-dict name);
    returns the optimizer parameter groups for them, each with an ``lr_scale`` of its calibrated value
    times :data:`RANGE_LR_SCALE` (the trainer multiplies the scheduled learning rate by it)."""
    groups = []
    for m in model.modules():
        if isinstance(m, QuantConv2d) and not isinstance(m.input_amax, nn.Parameter):
            value = m.input_amax.detach().clone()
            delattr(m, AMAX)  # the buffer; a parameter of the same name takes its place in the state dict
            m.input_amax = nn.Parameter(value)
            groups.append({"params": [m.input_amax], "lr_scale": RANGE_LR_SCALE * float(value)})
    return groups


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
    range 1 until :func:`calibrate`; the convolutions that read the image itself centre it on
    :data:`IMAGE_CENTRE`); returns how many convolution modules are quantized."""
    for m in model.modules():
        if type(m) is nn.Conv2d:
            # Class swap, not a new module: parameters, sharing (CBAM's MLP runs twice) and hooks stay.
            m.__class__ = QuantConv2d
            m.register_buffer(AMAX, torch.ones((), device=m.weight.device))
    for m in image_convs(model):
        if m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.register_buffer(OFFSET, torch.full((), IMAGE_CENTRE, device=m.weight.device))
    return sum(isinstance(m, QuantConv2d) for m in model.modules())


def image_convs(model: nn.Module, side: int = 64) -> list[nn.Module]:
    """The :class:`QuantConv2d` modules whose input is the model's input tensor itself (found by running a
    ``side`` x ``side`` frame; a model it does not fit gets none)."""
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    if not convs:
        return []
    w = convs[0].weight
    x = torch.zeros(1, convs[0].in_channels, side, side, device=w.device, dtype=w.dtype)
    found = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: found.append(mod) if args[0] is x else None)
             for m in convs]
    was_training = model.training
    try:
        with torch.no_grad(), quantizers_off(model):
            model.eval()(x)
    except RuntimeError:
        return []
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(found))


def with_offsets(model: nn.Module, state: dict) -> dict:
    """``state`` of a QAT weights file made before image centring: its image convolutions' offsets are 0."""
    missing = {f"{n}.{OFFSET}": torch.zeros(()) for n, m in model.named_modules()
               if hasattr(m, OFFSET) and f"{n}.{OFFSET}" not in state}
    return {**state, **missing}


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds quantization-aware convolutions."""
    return any(isinstance(m, QuantConv2d) for m in model.modules())


def is_qat_state(state: dict, meta: dict | None = None) -> bool:
    """True for the state dict (or weights metadata) of a quantization-aware model."""
    return (meta or {}).get("quantization") == QAT_TAG or any(k.endswith("." + AMAX) for k in state)


def float_state(state: dict) -> dict:
    """``state`` without the quantizers' ranges and offsets: the float network's weights."""
    return {k: v for k, v in state.items() if not k.endswith(("." + AMAX, "." + OFFSET))}


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
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: fn(mod, (args[0].detach() - float(getattr(mod, OFFSET, 0.0))).abs().float()))
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


def calibrate(model: nn.Module, frames: list[torch.Tensor], method: str = "frames",
              percentile: float = PERCENTILE) -> dict[str, float]:
    """Set every :class:`QuantConv2d`'s input range from ``frames`` (``(1, 3, H, W)`` tensors on the
    model's device); returns ``{module name: range}``.

    ``frames`` (the default): the :data:`FRAME_PERCENTILE`-th percentile over the frames of each frame's
    largest ``|x|``, so dark frames keep their resolution and bright ones clip. ``max``: the largest ``|x|``
    seen. ``percentile``: the ``percentile``-th of ``|x|`` over all frames, from
    a 2048-bin histogram on ``[0, max]`` (a second pass), which clips rare peaks to keep resolution.
    ``mse``: the range that minimises the expected squared quantization error over that histogram
    (clipping above it, rounding below it). The convolutions that read the image get its whole centred
    range, 0.5, whatever the method.
    """
    if method not in CALIB_METHODS:
        raise DFNError(f"--qat-calib must be one of {', '.join(CALIB_METHODS)}")
    if not frames:
        raise DFNError("QAT calibration needs at least one training frame")
    if method == "frames":
        return _set_ranges(model, _frame_peaks(model, frames))
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
    return _set_ranges(model, amax)


def _frame_peaks(model: nn.Module, frames: list[torch.Tensor]) -> dict[nn.Module, float]:
    """Each conv's :data:`FRAME_PERCENTILE`-th percentile, over ``frames``, of the frame's peak ``|x|``."""
    peaks: dict[nn.Module, list[float]] = {}
    for x in frames:
        frame: dict[nn.Module, torch.Tensor] = {}
        _collect(model, [x], lambda m, a: frame.__setitem__(m, torch.maximum(frame.get(m, a.max()), a.max())))
        for m, v in frame.items():
            peaks.setdefault(m, []).append(float(v))
    return {m: float(torch.quantile(torch.tensor(v, dtype=torch.float64), FRAME_PERCENTILE / 100))
            for m, v in peaks.items()}


def _set_ranges(model: nn.Module, amax: dict) -> dict[str, float]:
    """Write ``amax`` into the convs' ranges (image convs: their whole centred range); returns them by
    name."""
    names = {m: n for n, m in model.named_modules()}
    out = {}
    for m, value in amax.items():
        value = max(float(value), 1e-6)  # an all-zero input (dead channel) still needs a positive scale
        if hasattr(m, OFFSET):  # the image, [0, 1] centred: its whole range, steps as fine as its 8 bits
            value = max(float(getattr(m, OFFSET)), 1.0 - float(getattr(m, OFFSET)))
        m.input_amax.fill_(value)
        out[names[m]] = value
    return out
