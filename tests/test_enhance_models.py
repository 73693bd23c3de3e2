"""The ONNX models the enhance tests run: the shipped ones, or exported from the shipped weights.

``onnx_models`` is imported by the other enhance/no-torch tests; the test here checks the premise they
all rely on (the enhancer brightens a real night image and the SR model doubles its size).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = ("deepfusionnet", "deepfusionnet-sr")


def _export(name: str, folder: Path) -> Path:
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
    path.with_name(path.name + ".json").write_text(json.dumps({"model": name, "scale": scale, "multiple": multiple}))
    return path


def onnx_models(tmp_path_factory) -> dict[str, Path]:
    """{name: .onnx path}: ``resolve(name)`` when the shipped ONNX exists, else a session-wide export."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.artifacts import resolve

    folder = tmp_path_factory.getbasetemp() / "dfn-onnx"
    folder.mkdir(exist_ok=True)
    out = {}
    for name in NAMES:
        try:
            out[name] = resolve(name).path
        except DFNError:
            path = folder / f"{name}.onnx"
            out[name] = path if path.is_file() else _export(name, folder)
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    return onnx_models(tmp_path_factory)


def small_night(path: Path, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A real night image shrunk to ``size`` (W, H), as uint8 RGB."""
    from deepfusionnet.runtime.images import read_image

    return cv2.resize(read_image(path), size, interpolation=cv2.INTER_AREA)


def test_models_brighten_and_upscale(models, samples):
    from deepfusionnet.runtime.enhancer import open_enhancer

    img = small_night(samples / "lol-22.png")
    enh = open_enhancer(str(models["deepfusionnet"]), "onnxruntime")
    sr = open_enhancer(str(models["deepfusionnet-sr"]), "onnxruntime")
    try:
        out = enh(img)
        assert out.shape == img.shape and out.mean() > img.mean() + 20
        assert sr(out).shape == (240, 320, 3)
    finally:
        enh.close()
        sr.close()
