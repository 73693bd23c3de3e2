"""INT8 calibration stays within memory: frames per calibration pass follow the activations one frame
keeps (ONNX shape inference, or one ONNX Runtime run where it cannot tell) and the memory that is free."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")

from deepfusionnet.errors import DFNError  # noqa: E402
from deepfusionnet.export import precision  # noqa: E402
from helpers import tiny_onnx  # noqa: E402


def test_activation_bytes_count_every_conv_input_and_output(tmp_path):
    proto = onnx.load(tiny_onnx(tmp_path / "t.onnx"))  # input -> Conv(3->3) -> Sigmoid
    assert precision.activation_bytes(proto, 48, 64) == 2 * 3 * 48 * 64 * 4


def test_chunk_shrinks_with_free_memory_and_a_frame_too_large_is_one_line(tmp_path, monkeypatch):
    proto = onnx.load(tiny_onnx(tmp_path / "t.onnx"))
    per_frame = 2 * 3 * 240 * 320 * 4
    monkeypatch.setattr(precision, "available_memory", lambda: 100 * per_frame)
    assert precision.frames_per_chunk(proto, (240, 320), most=8) == 8
    monkeypatch.setattr(precision, "available_memory", lambda: 12 * per_frame)
    assert precision.frames_per_chunk(proto, (240, 320), most=8) == 3  # a quarter of the free memory
    monkeypatch.setattr(precision, "available_memory", lambda: 2 * per_frame)
    with pytest.raises(DFNError, match="--calib-size") as err:
        precision.frames_per_chunk(proto, (240, 320), most=8)
    assert "\n" not in str(err.value)
