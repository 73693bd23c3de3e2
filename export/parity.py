"""The parity check run at export: the exported graph against the PyTorch model it came from.

The comparison itself lives in :mod:`deepfusionnet.runtime.measure.compare` (torch-free, so ``dfn parity``
also runs on a device); this module only fixes the export-time choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from deepfusionnet.runtime.measure.compare import ParityReport, TOLERANCES, compare_models

__all__ = ["ParityReport", "TOLERANCES", "parity_report"]


def parity_report(reference: str, candidate: str, data: str | Path, precision: str, limit: int | None = 4,
                  backend_ref: str = "torch", backend: str = "onnxruntime", threads: int | None = None,
                  progress: Callable[[str], None] | None = None) -> ParityReport:
    """Run ``candidate`` (an exported graph) against ``reference`` (PyTorch weights) on ``limit`` images."""
    return compare_models(reference, candidate, data, precision, limit, backend_ref, backend, threads, progress)
