"""What precision a benchmark row really ran in ("ran as"), and its multiply-adds per precision.

The row's precision names the graph or hint it asked for; the backend decides what runs:

* OpenVINO (CPU) runs a graph's float parts in its resolved ``INFERENCE_PRECISION_HINT``, which is
  BF16 on CPUs with bf16 hardware unless the hint says f32, for FP32 and INT8 graphs alike. The
  compiled model is asked: the hint it resolved, and its runtime graph's per-layer precision of every
  Convolution (``u8``/``i8`` = INT8, ``bf16``, ``f32``, ``f16``).
* ONNX Runtime's CPU execution provider runs float parts in FP32 (an FP16 graph's nodes without FP16
  CPU kernels run through casts) and Q/DQ convolutions as integer convs (QLinearConv); other execution
  providers run the precision in the graph.
* PyTorch eager runs FP32; other backends (TensorRT) run what the graph says.

The ONNX graph gives each conv's multiply-adds and whether it is a Q/DQ (INT8) conv
(:func:`~deepfusionnet.runtime.measure.macs.onnx_conv_table`); a backend that ran no integer conv gets
all of them as float.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepfusionnet.runtime.backends.base import Backend

# OpenVINO runtimePrecision / hint names -> ours
_OV_NAMES = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f32": "fp32", "f16": "fp16", "bfloat16": "bf16",
             "float32": "fp32", "float16": "fp16"}
_CONV_LAYERS = ("Convolution", "Deconvolution", "GroupConvolution")


def _graph_float(path: Path, backend: Backend) -> str:
    """The float precision the graph itself carries: fp16 for an FP16 export, else fp32."""
    inputs = getattr(backend, "inputs", None) or []
    if path.name.endswith(".fp16.onnx") or (inputs and inputs[0].dtype == "float16"):
        return "fp16"
    return "fp32"


def openvino_conv_precisions(backend: Backend) -> tuple[str | None, Counter]:
    """The resolved inference precision of OpenVINO's last compiled model, and its convolutions counted
    by runtime precision (empty when nothing was compiled or the runtime graph cannot be read)."""
    hint = backend.execution_precision() if hasattr(backend, "execution_precision") else None
    counts: Counter = Counter()
    # The backend keeps its compiled models per input shape (runtime/backends/openvino.py); read, not changed.
    compiled_models = getattr(backend, "_compiled", None)
    if compiled_models:
        compiled = next(reversed(compiled_models.values()))[0]
        try:
            for op in compiled.get_runtime_model().get_ops():
                info = op.get_rt_info()
                if str(info["layerType"].astype(str)) in _CONV_LAYERS:
                    prec = str(info["runtimePrecision"].astype(str))
                    counts[_OV_NAMES.get(prec, prec)] += 1
        except Exception:  # noqa: BLE001 - an older OpenVINO without these rt_info keys: the hint alone
            counts.clear()
    return (_OV_NAMES.get(str(hint).lower(), hint) if hint else None), counts


@lru_cache(maxsize=32)
def conv_table(path: str, height: int, width: int) -> tuple[tuple | None, str]:
    from deepfusionnet.runtime.measure.macs import onnx_conv_table

    try:
        table, note = onnx_conv_table(path, height, width)
    except Exception as exc:  # noqa: BLE001 - MACs are a report, never a reason to fail a row
        return None, f"MACs not counted ({type(exc).__name__})"
    return (tuple(table) if table is not None else None), note


def stage_ran_as(backend: Backend, path: Path, size: tuple[int, int] | None) -> dict:
    """One stage: its backend, float precision, INT8 / total convs, and MACs per precision at ``size``
    = (width, height) of its input (None where they cannot be counted)."""
    name = getattr(backend, "name", type(backend).__name__)
    table, note = conv_table(str(path), size[1], size[0]) if size and path.suffix == ".onnx" else (None, "")
    q_convs = sum(1 for _, _, q in table if q) if table else 0
    convs = len(table) if table else None
    source = "rule"
    if name == "openvino":
        hint, counts = openvino_conv_precisions(backend)
        floats = Counter({p: c for p, c in counts.items() if p != "int8"})
        fp = floats.most_common(1)[0][0] if floats else (hint or "fp32")
        int8 = counts.get("int8", 0) if counts else q_convs
        convs = sum(counts.values()) if counts else convs
        source = "openvino runtime graph" if counts else "openvino hint"
    elif name.startswith("onnxruntime") or name.startswith("ort"):
        cpu = list(getattr(backend, "providers", ["CPUExecutionProvider"]) or ["CPUExecutionProvider"])[0]
        fp = "fp32" if cpu == "CPUExecutionProvider" else _graph_float(path, backend)
        int8 = q_convs
    elif name == "torch":
        fp, int8 = "fp32", 0
    else:
        fp, int8, source = _graph_float(path, backend), q_convs, "graph"
    macs = None
    if table:
        q_macs = sum(m for _, m, q in table if q) if int8 else 0
        macs = {p: m for p, m in (("int8", q_macs), (fp, sum(m for _, m, _ in table) - q_macs)) if m}
    return {"backend": name, "float": fp, "int8_convs": int8, "convs": convs, "macs": macs,
            "source": source, "macs_note": note}


def ran_as_label(stages: list[dict]) -> str:
    """``fp32``, ``bf16``, ``int8 convs 8/62 + bf16 rest``; stages joined by `` | ``."""
    labels = []
    for s in stages:
        n, k = s.get("convs"), s.get("int8_convs") or 0
        if k and n and k >= n:
            labels.append("int8")
        elif k:
            labels.append(f"int8 convs {k}/{n if n is not None else '?'} + {s['float']} rest")
        else:
            labels.append(s["float"])
    return labels[0] if len(set(labels)) == 1 else " | ".join(labels)


def row_macs(stages: list[dict]) -> dict[str, int] | None:
    """Multiply-adds per precision summed over the stages, or None if any stage's are unknown."""
    total: Counter = Counter()
    for s in stages:
        if not s.get("macs"):
            return None
        total.update(s["macs"])
    return dict(total)
