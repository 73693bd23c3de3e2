"""What machine a benchmark or an ``auto`` decision was made on: CPU, ISA features, GPU, library versions.

Read from ``/proc`` and package metadata only (nothing heavy is imported), so it is cheap enough to
key a cache on.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

# ISA features that change which kernels ONNX Runtime / OpenVINO pick (x86 and Arm names from /proc/cpuinfo).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "asimddp", "bf16", "i8mm", "sve", "sve2")

LIBRARIES = ("numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "openvino", "torch",
             "tensorrt", "deepfusionnet")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip().lower(), value.strip())
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    name = info.get("model name") or info.get("hardware") or platform.processor() or platform.machine()
    fam = info.get("cpu family")
    return f"{name} (family {fam}, model {info.get('model')})" if fam else name


def isa_features() -> list[str]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    return [f for f in ISA_FLAGS if f in flags]


def has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16, AMX, Arm BF16).

    Without it PyTorch's CPU bf16 autocast falls back to slow kernels: measured 80x slower than FP32 for
    one DeepFusionNet forward pass on an AVX2-only Zen 3, where it is 1.6x faster on an AVX512-BF16 Zen 5.
    """
    return bool(set(isa_features()) & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def _jetson() -> str | None:
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            text = Path(p).read_text(errors="replace").strip("\x00 \n")
        except OSError:
            continue
        if "jetson" in text.lower() or "nvidia" in text.lower():
            return text
    return None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def machine_info() -> dict:
    """CPU model, cores, ISA features, memory, GPUs, Jetson model, OS and library versions."""
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": cpu_cores(),
        "isa": isa_features(),
        "memory_gb": _memory_gb(),
        "gpu": _gpus() or None,
        "jetson": _jetson(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def machine_key() -> dict:
    """The parts of :func:`machine_info` a cached speed decision depends on."""
    m = machine_info()
    return {"cpu": m["cpu"], "cores": m["cores"], "isa": m["isa"], "gpu": m["gpu"], "libraries": m["libraries"]}
