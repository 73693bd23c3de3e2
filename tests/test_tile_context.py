"""Seam-free tiles: every tile of a frame runs with the frame's channel-attention context."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deepfusionnet.errors import DFNError  # noqa: E402
from deepfusionnet.runtime.enhancer import open_enhancer  # noqa: E402
from deepfusionnet.runtime.images import read_image  # noqa: E402
from deepfusionnet.runtime.metrics import psnr  # noqa: E402
from deepfusionnet.runtime.samples import sample_dir  # noqa: E402
from deepfusionnet.runtime.tile_context import companion_path, context_frame, context_input  # noqa: E402
from deepfusionnet.train.models.context import ContextGraph, TileGraph, attention_blocks, context_width  # noqa: E402
from deepfusionnet.train.models.registry import create_model as build_model  # noqa: E402


def frame(w: int, h: int) -> np.ndarray:
    return cv2.resize(read_image(sample_dir() / "dicm-01.jpg"), (w, h), interpolation=cv2.INTER_AREA)


def two_by_two(w: int, h: int, multiple: int = 8) -> int:
    """The tile side that cuts a w x h frame into 2 x 2 tiles with at least the 32 px overlap."""
    return -(-((max(w, h) + 33) // 2) // multiple) * multiple


def test_tile_graph_with_its_own_context_is_the_network():
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.train.weights import load_model

    net = load_model(resolve("deepfusionnet", "weights").path)[0].eval()
    x = torch.from_numpy(frame(64, 48).transpose(2, 0, 1)[None] / np.float32(255))
    with torch.no_grad():
        ctx = ContextGraph(net)(x)
        assert ctx.shape == (1, context_width(net)) == (1, sum(b.channels for b in attention_blocks(net)))
        assert torch.equal(TileGraph(net)(x, ctx), net(x))
        other = ContextGraph(net)(x * 3)
        assert (TileGraph(net)(x, other) - net(x)).abs().max() > 0.01  # the given context is what counts
    assert all(b.given is None and b.record is None for b in attention_blocks(net))  # left as found


def test_torch_tiles_agree_with_the_whole_frame_only_with_the_context():
    e = open_enhancer("deepfusionnet", "torch", gate=False)
    img = frame(320, 240)
    whole = replace(e, tile=1 << 30)(img)
    tiled = replace(e, tile=two_by_two(320, 240))(img)
    plain = replace(e, tile=two_by_two(320, 240), companions=None)(img)
    assert psnr(tiled, whole) >= 40
    assert psnr(plain, whole) < psnr(tiled, whole) - 10  # the seams the context removes


def test_frames_that_fit_one_tile_never_load_the_companions():
    e = open_enhancer("deepfusionnet", "torch", gate=False)
    calls = []
    e.companions = lambda: calls.append(1)
    img = frame(160, 120)
    assert np.array_equal(e(img), replace(e, companions=None)(img))
    assert calls == [] and e.context is None


def test_models_without_channel_attention_tile_as_before():
    e = open_enhancer("unet-sid", "torch", gate=False)
    assert e.tile_context() is None
    img = frame(160, 120)
    assert replace(e, tile=96)(img).shape == img.shape


def test_context_frame_fits_and_keeps_aspect():
    x = np.random.default_rng(0).random((1, 3, 1080, 1920), dtype=np.float32)
    small = context_frame(x, (1024, 1024))
    assert small.shape == (1, 3, 576, 1024)
    assert context_frame(x, (1080, 1920)) is x
    assert abs(float(small.mean()) - float(x.mean())) < 1e-3  # area averaging keeps the mean


def test_companion_names_and_a_wrong_tile_graph_are_clear(tmp_path):
    assert companion_path(tmp_path / "m.fp16.onnx", "tile").name == "m.fp16.tile.onnx"
    assert companion_path(tmp_path / "m.engine", "context").name == "m.context.engine"
    be = SimpleNamespace(name="x.tile.onnx", inputs=[SimpleNamespace(name="input")])
    with pytest.raises(DFNError, match="context"):
        context_input(be)


def test_an_export_without_companions_removes_stale_ones(tmp_path):
    from deepfusionnet.export.pipeline import tile_companions

    out = tmp_path / "m.onnx"
    for role in ("context", "tile"):
        companion_path(out, role).write_bytes(b"stale")
    job = SimpleNamespace(out=out, net=build_model("unet-sid"), qat=False,
                          opts=SimpleNamespace(precision="fp32"), progress=print)
    assert tile_companions(job, None) == {}
    assert not any(companion_path(out, r).exists() for r in ("context", "tile"))
