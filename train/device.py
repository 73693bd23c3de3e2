"""Where training and the torch backend run: ``--device``, mixed precision, the distributed backend.

Every choice is a plain function of a device and :class:`Capabilities`, so a CPU-only machine tests
the CUDA branches by passing capabilities in; :func:`probe` is the one place that asks torch what
this machine has.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from deepfusionnet.errors import DFNError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers, as far as device and precision choices go."""

    cuda_devices: int = 0  # visible CUDA GPUs
    cuda_bf16: bool = False  # the GPUs compute bf16 natively (compute capability 8.0+)
    cpu_bf16: bool = False  # the CPU computes bf16 natively (AVX512-BF16, AMX, Arm BF16)
    torch_cuda: str | None = None  # CUDA version torch was built with; None for a CPU-only build
    gpu_name: str = ""


def probe() -> Capabilities:
    """This machine's capabilities (initialises CUDA only when a GPU is visible)."""
    from deepfusionnet.runtime.measure.machine import has_native_bf16

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Capabilities(
        cuda_devices=count,
        # Without emulation: an emulated bf16 runs slower than fp16, so such a GPU should pick fp16.
        cuda_bf16=bool(count) and torch.cuda.is_bf16_supported(including_emulation=False),
        cpu_bf16=has_native_bf16(),
        torch_cuda=torch.version.cuda,
        gpu_name=torch.cuda.get_device_name(0) if count else "",
    )


def local_rank() -> tuple[int, int]:
    """``(LOCAL_RANK, LOCAL_WORLD_SIZE)`` as torchrun sets them; ``(0, 1)`` outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _no_cuda_reason(caps: Capabilities) -> str:
    if caps.torch_cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"torch sees no GPU (CUDA {caps.torch_cuda} build" + (
        f", CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "; is the driver loaded?)")


def resolve_device(spec: str, caps: Capabilities, rank: int = 0, local_world: int = 1) -> torch.device:
    """The device ``--device spec`` means for the process of local rank ``rank`` among ``local_world``.

    ``auto``: that process's GPU when CUDA is visible, else the CPU. ``cuda``: GPU ``rank`` (under
    torchrun each process takes its own). ``cuda:N``: GPU N, for a single process only.
    """
    match = _DEVICE.match(spec.strip().lower())
    if not match or (match[2] is not None and match[1] != "cuda"):
        raise DFNError(f"--device must be {DEVICE_CHOICES}, got {spec!r}")
    kind, index = match[1], match[2]
    if kind == "cpu" or (kind == "auto" and caps.cuda_devices == 0):
        return torch.device("cpu")
    if caps.cuda_devices == 0:
        raise DFNError(f"--device {spec}: no CUDA GPU is visible ({_no_cuda_reason(caps)}); "
                       "use --device cpu or auto")
    if index is not None:
        if local_world > 1:
            raise DFNError(f"--device {spec} puts all {local_world} processes of this node on one GPU; "
                           "use --device cuda (each process takes the GPU of its LOCAL_RANK)")
        if int(index) >= caps.cuda_devices:
            raise DFNError(f"--device {spec}: only {caps.cuda_devices} CUDA GPU(s) visible "
                           f"(cuda:0 to cuda:{caps.cuda_devices - 1})")
        return torch.device("cuda", int(index))
    if local_world > caps.cuda_devices:
        raise DFNError(f"--device {spec}: {local_world} processes on this node but {caps.cuda_devices} CUDA "
                       f"GPU(s) visible; start torchrun with --nproc_per_node {caps.cuda_devices}")
    return torch.device("cuda", rank)


@dataclass(frozen=True)
class Arithmetic:
    """How the forward pass computes: FP32, or autocast to ``dtype`` (fp16 with a gradient scaler)."""

    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None = None  # autocast dtype; None: FP32
    scaler: bool = False  # fp16 gradients underflow without loss scaling

    def describe(self) -> str:
        return {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}[self.name]


FP32 = Arithmetic("fp32")
BF16 = Arithmetic("bf16", torch.bfloat16)
FP16 = Arithmetic("fp16", torch.float16, scaler=True)
ARITHMETIC = {a.name: a for a in (FP32, BF16, FP16)}


def choose_arithmetic(device: torch.device, bf16: str, amp: str, caps: Capabilities) -> Arithmetic:
    """The training arithmetic: ``--bf16`` decides on the CPU, ``--amp`` on CUDA.

    CPU: FP32 unless ``--bf16 on``, or ``auto`` where the CPU has bf16 hardware (elsewhere PyTorch falls
    back to kernels measured 80x slower). CUDA: ``auto`` is bf16 autocast where the GPU has bf16 and
    fp16 with a gradient scaler where it has not (before compute capability 8.0).
    """
    if bf16 not in ("auto", "on", "off"):
        raise DFNError("--bf16 must be auto, on or off")
    if amp not in AMP_CHOICES:
        raise DFNError(f"--amp must be one of {', '.join(AMP_CHOICES)}")
    if device.type != "cuda":
        return BF16 if bf16 == "on" or (bf16 == "auto" and caps.cpu_bf16) else FP32
    if amp == "off":
        return FP32
    if amp == "fp16" or (amp == "auto" and not caps.cuda_bf16):
        return FP16
    if not caps.cuda_bf16:
        raise DFNError(f"--amp bf16: {caps.gpu_name or 'this GPU'} has no bf16 arithmetic (compute "
                       "capability 8.0 and later); use --amp fp16 or auto")
    return BF16


def autocast(device: torch.device, arithmetic: Arithmetic):
    """The autocast context of one forward pass (entered every step, disabled for FP32)."""
    # torch.autocast is torch.amp.autocast; called through ``torch`` so tests can watch it.
    return torch.autocast(device.type, dtype=arithmetic.dtype or torch.bfloat16,
                          enabled=arithmetic.dtype is not None)


def make_scaler(device: torch.device, arithmetic: Arithmetic) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (``torch.amp.GradScaler(device.type)``), None otherwise."""
    return torch.amp.GradScaler(device.type) if arithmetic.scaler else None


def distributed_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def channels_last(device: torch.device) -> bool:
    """NHWC on CUDA, where cuDNN's convolutions (tensor cores under autocast) want it; the CPU keeps
    NCHW, whose kernels the bitwise-exact resume of CPU runs was measured with."""
    return device.type == "cuda"


def default_workers(device: torch.device, cpus: int | None, local_world: int = 1) -> int:
    """DataLoader workers when ``--workers`` is not given: on CUDA up to 4 per process, from the cores
    this node's processes share (cropping and augmenting in the loop would leave the GPU waiting); on
    the CPU none, since the training threads use every core already."""
    if device.type != "cuda":
        return 0
    return max(0, min(4, (cpus or 1) // max(1, local_world) - 1))


def configure(device: torch.device, arithmetic: Arithmetic) -> None:
    """Process-wide settings for training on ``device``: cuDNN picks the fastest kernels for the fixed
    crop size (benchmark mode; not bitwise reproducible, which CUDA runs are not anyway). ``--amp off``
    means FP32: torch would otherwise run FP32 convolutions in TF32 (a 10-bit mantissa)."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    if arithmetic.dtype is None:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def describe(device: torch.device, world: int = 1) -> str:
    """``cuda:0``/``the CPU``, with the process count under torchrun: for log lines and notes."""
    where = "the CPU" if device.type == "cpu" else str(device)
    return where if world == 1 else f"{where} x {world} processes"
