"""PyTorch -> ONNX export with precision in the graph (FP32, FP16, INT8 Q/DQ) and a parity check.

Steps, each usable alone: :func:`.onnx.onnx_from_torch` (FP32 graph, dynamic H/W),
:func:`.precision.fp16_from_onnx`, :func:`.precision.int8_from_onnx`, :mod:`.sidecar` (metadata and
JSON sidecar), :mod:`.parity` (check against PyTorch); :func:`.pipeline.export_model` composes them
(each precision a step wrapping the one before, as Polygraphy's loaders do) as ``dfn export`` does.
Needs ``deepfusionnet[export]`` (torch, onnx).
"""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy, so `import deepfusionnet.export.sidecar` does not pull torch in.
    if name in ("ExportOptions", "ExportResult", "export_model"):
        from deepfusionnet.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = ["ExportOptions", "ExportResult", "export_model"]
