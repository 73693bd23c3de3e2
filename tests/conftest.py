"""Shared fixtures: real data locations, the ONNX models the enhance tests run, and the central skip of
GPU tests. Shared plain helpers live in helpers.py."""

from __future__ import annotations

import importlib.util
import json
import warnings
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


def _has_torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


# What each GPU stack needs: ``@pytest.mark.gpu`` tests TensorRT, ``@pytest.mark.gpu(stack="torch")`` a CUDA
# build of torch (training, the torch backend); each is checked only when a test needs it.
_GPU_STACKS = {"tensorrt": (_has_cuda, "needs CUDA and TensorRT (none on this machine)"),
               "torch": (_has_torch_cuda, "needs a CUDA GPU visible to torch (none on this machine)")}


def pytest_configure(config):
    """The ``auto`` backend's decision cache of this test session: a temporary folder, never the user's
    (``~/.cache/deepfusionnet`` or their ``$DFN_CACHE``): a test's toy models and timings must not steer
    real runs. Set in the environment, so every ``dfn`` process a test starts uses it too."""
    import os
    import tempfile

    config._dfn_cache = tempfile.mkdtemp(prefix="dfn-test-cache-")
    os.environ["DFN_CACHE"] = config._dfn_cache


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_dfn_cache", None):
        shutil.rmtree(config._dfn_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    available: dict[str, bool] = {}
    for item in items:
        if "gpu" not in item.keywords:
            continue
        marker = item.get_closest_marker("gpu")
        stack = marker.kwargs.get("stack", "tensorrt") if marker is not None else "tensorrt"
        check, reason = _GPU_STACKS[stack]
        if stack not in available:
            available[stack] = check()
        if not available[stack]:
            item.add_marker(pytest.mark.skip(reason=reason))


# The machine's matmul floor (runtime/measure/floor.py) as stand-in numbers: `dfn bench` measures it
# for real in every run (several seconds of 4096^3 matmuls); the tests of the floor itself call the real
# measurement explicitly, on small matrices.
STAND_IN_FLOOR = {"fp32": {"gflops": 100.0, "library": "numpy", "n": 2048, "status": "ok"},
                  "bf16": {"gflops": 400.0, "library": "openvino", "n": 4096, "status": "ok"},
                  "int8": {"gflops": 800.0, "library": "openvino", "n": 4096, "status": "ok"},
                  "meta": {"threads": 2, "stand_in": True}}


@pytest.fixture(autouse=True)
def stand_in_floor(monkeypatch):
    from deepfusionnet.runtime.measure import floor

    monkeypatch.setattr(floor, "measure_floor", lambda *a, **k: STAND_IN_FLOOR)


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


@pytest.fixture
def keep_torch_threads():
    """Restore torch's intra-op thread count after a test that trains (training sets it)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------
# The ONNX models the enhance, pipeline and no-torch tests run


def _export_shipped(name: str, folder: Path) -> Path:
    torch = pytest.importorskip("torch", reason="no shipped ONNX and no torch to export one")
    from deepfusionnet.runtime.artifacts import SHIPPED, resolve
    from deepfusionnet.train.weights import load_model

    model, _ = load_model(resolve(name, "weights").path)
    model.eval()
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.rand(1, 3, 64, 64), str(path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {2: "height", 3: "width"},
                                        "output": {2: "out_height", 3: "out_width"}})
    scale, multiple, _ = SHIPPED[name]
    path.with_name(path.name + ".json").write_text(json.dumps({"model": name, "scale": scale,
                                                               "multiple": multiple}))
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """{name: .onnx path} of the shipped models: ``resolve(name)`` when the shipped ONNX exists, else a
    session-wide export of the shipped weights."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.artifacts import resolve

    folder = tmp_path_factory.getbasetemp() / "dfn-onnx"
    folder.mkdir(exist_ok=True)
    out = {}
    for name in ("deepfusionnet", "deepfusionnet-sr"):
        try:
            out[name] = resolve(name).path
        except DFNError:
            path = folder / f"{name}.onnx"
            out[name] = path if path.is_file() else _export_shipped(name, folder)
    return out


TINY_NAMES = ["100.png", "101.png", "102.png", "103.png", "104.png", "105.png"]


@pytest.fixture(scope="session")
def tiny(lol_train, tmp_path_factory) -> Path:
    """Six real LOL training pairs shrunk to 64x48 (TINY_NAMES): training runs of seconds."""
    import cv2

    root = tmp_path_factory.mktemp("pairs")
    for sub in ("low", "high"):
        (root / sub).mkdir()
        for n in TINY_NAMES:
            img = cv2.imread(str(lol_train / sub / n))
            cv2.imwrite(str(root / sub / n), cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA))
    return root

