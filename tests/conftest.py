"""Shared fixtures: real data locations and the central skip of GPU tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "night"
SHARED = REPO.parent / "shared" / "data"
LOL = SHARED / "lol-v1"


def _has_cuda() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        from cuda.bindings import runtime as cudart  # noqa: F401

        err, n = cudart.cudaGetDeviceCount()
        return int(err) == 0 and n > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA and TensorRT (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def lol_eval15() -> Path:
    if not (LOL / "eval15" / "low").is_dir():
        pytest.skip("LOL-v1 eval15 not found beside the repository (../shared/data/lol-v1)")
    return LOL / "eval15"


@pytest.fixture(scope="session")
def lol_train() -> Path:
    if not (LOL / "train" / "low").is_dir():
        pytest.skip("LOL-v1 train not found beside the repository (../shared/data/lol-v1)")
    return LOL / "train"
