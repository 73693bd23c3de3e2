"""A fixed-size export (``dfn export --size``) runs on frames of any other size under every command and the
default backend: the runtime pads (or tiles) each frame to the graph's size and crops back; a backend
error keeps its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from deepfusionnet.cli import main  # noqa: E402
from deepfusionnet.runtime.images import read_image  # noqa: E402
from deepfusionnet.runtime.metrics import psnr  # noqa: E402


@pytest.fixture(scope="module")
def fixed_onnx(tmp_path_factory):
    """The enhancer exported at a fixed 640x480, the CLI's way (no parity check, no lint: speed)."""
    out = tmp_path_factory.mktemp("fixed") / "dfn-640x480.onnx"
    assert (
        main(["export", "deepfusionnet", "-o", str(out), "--size", "640x480", "--no-check", "--no-lint"]) == 0
    )
    return out


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFN_CACHE", str(tmp_path / "cache"))


def test_fixed_graph_enhances_a_600x400_frame_with_the_default_backend(
    fixed_onnx, samples, tmp_path, private_cache, capsys
):
    frame = samples / "lol-22.png"
    assert read_image(frame).shape[:2] == (400, 600)
    out = tmp_path / "out.png"
    assert main(["enhance", str(frame), "--model", str(fixed_onnx), "-o", str(out)]) == 0, (
        capsys.readouterr().err
    )
    y = read_image(out)
    assert y.shape == (400, 600, 3) and y.mean() > read_image(frame).mean() + 20  # enhanced, not padded junk
    # the same frame through the shipped dynamic graph: the 40 padded rows and columns shift the global
    # attention statistics a little (and auto may pick a BF16 backend), nothing more
    ref = tmp_path / "ref.png"
    assert (
        main(["enhance", str(frame), "--model", "deepfusionnet", "--backend", "onnxruntime", "-o", str(ref)])
        == 0
    )
    assert psnr(read_image(ref), y) > 30


def test_fixed_graph_evaluates_and_benchmarks_at_600x400(fixed_onnx, lol_eval15, private_cache, capsys):
    assert main(["eval", str(fixed_onnx), "--data", str(lol_eval15), "--limit", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["psnr"] > 15
    assert main(["bench", str(fixed_onnx), "--backend", "onnxruntime,auto", "--runs", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert all(r["size"] == "600x400" or r["size"] == [600, 400] for r in rows)


def test_backend_errors_keep_their_reason(fixed_onnx):
    """ONNX Runtime spreads 'invalid dimensions' over lines; the one-line message keeps the sizes."""
    import onnxruntime as ort

    from deepfusionnet.errors import native_reason

    sess = ort.InferenceSession(str(fixed_onnx), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as info:
        sess.run(None, {"input": np.zeros((1, 3, 400, 600), np.float32)})
    reason = native_reason(info.value)
    assert "\n" not in reason and "Got: 400 Expected: 480" in reason
