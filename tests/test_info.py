"""dfn info: parameters and conv MACs match the spec, from torch, ONNX and safetensors alike."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest

from deepfusionnet.cli import main
from deepfusionnet.commands.info import torch_stats
from deepfusionnet.runtime import artifacts
from deepfusionnet.runtime.measure.macs import (onnx_conv_macs, onnx_params, read_onnx_summary,
                                                safetensors_params)

ENH_PARAMS, SR_PARAMS = 2_595_463, 109_520


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def enh_onnx(torch, tmp_path_factory):
    """The shipped (trained) enhancement weights exported to ONNX the standard way, into a temp dir."""
    pytest.importorskip("onnx")
    import warnings

    from deepfusionnet.train.weights import load_model

    net, _ = load_model(artifacts.shipped_path("deepfusionnet", "weights"))
    path = tmp_path_factory.mktemp("onnx") / "deepfusionnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {2: "height", 3: "width"},
                                                                 "output": {2: "height", 3: "width"}},
                          opset_version=17, dynamo=False)
    return path


def test_spec_numbers_from_torch(torch):
    from deepfusionnet.train.models import create_model

    p, macs, shape = torch_stats(create_model("deepfusionnet"), 400, 600)
    assert p == ENH_PARAMS and round(macs / 1e9, 2) == 43.78 and shape == (1, 3, 400, 600)
    p, macs, _ = torch_stats(create_model("deepfusionnet"), 256, 256)
    assert round(macs / 1e9, 2) == 11.96
    p, macs, shape = torch_stats(create_model("deepfusionnet-sr"), 256, 256)
    assert p == SR_PARAMS and round(macs / 1e9, 3) == 1.506 and shape == (1, 3, 512, 512)


def test_cli_shipped_name_reports_param_count(torch, capsys):
    rec = _json(capsys, ["info", "deepfusionnet", "--size", "64x48", "--json"])
    assert rec["params"] == ENH_PARAMS and rec["scale"] == 1 and rec["multiple"] == 8
    weights = artifacts.shipped_path("deepfusionnet", "weights")
    assert rec["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert rec["inputs"][0]["name"] == "input" and rec["macs"] > 0
    rec = _json(capsys, ["info", "deepfusionnet-sr", "--size", "60x44", "--json"])
    assert rec["params"] == SR_PARAMS and rec["scale"] == 2
    assert rec["padded_size"] == [64, 48] and rec["output_size"] == [120, 88]
    assert main(["info", "deepfusionnet"]) == 0  # the human table, at the default 600x400
    err = capsys.readouterr().err
    assert "2,595,463" in err and "43.785 G at 600x400" in err and "sha256" in err


def test_safetensors_header_count_needs_no_torch():
    assert safetensors_params(artifacts.shipped_path("deepfusionnet", "weights")) == ENH_PARAMS
    assert safetensors_params(artifacts.shipped_path("deepfusionnet-sr", "weights")) == SR_PARAMS


def test_onnx_counts_match_torch(enh_onnx, capsys):
    params, elements = onnx_params(read_onnx_summary(enh_onnx))
    assert params == ENH_PARAMS and elements > params  # BatchNorm running statistics left out
    # The shipped graph went through onnxslim: its Resize scales are initializers, not parameters.
    shipped = artifacts.shipped_path("deepfusionnet", "onnx")
    if shipped.is_file():
        assert onnx_params(read_onnx_summary(shipped))[0] == ENH_PARAMS
    assert round(onnx_conv_macs(enh_onnx, 400, 600)[0] / 1e9, 2) == 43.78
    rec = _json(capsys, ["info", str(enh_onnx), "--size", "256x256", "--json"])
    assert rec["kind"] == "onnx" and rec["params"] == ENH_PARAMS and round(rec["gmacs"], 2) == 11.96
    assert rec["inputs"][0]["shape"] == [1, 3, "height", "width"]


def test_onnx_without_onnx_package(enh_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    macs, note = onnx_conv_macs(enh_onnx, 64, 64)
    assert macs is None and "onnx" in note
    assert onnx_params(read_onnx_summary(enh_onnx))[0] == ENH_PARAMS


def test_shipped_name_without_torch_uses_shipped_onnx(enh_onnx, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(artifacts, "WEIGHTS_DIR", weights)
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["info", "deepfusionnet", "--json"]) == 1
    assert "no ONNX" in capsys.readouterr().err
    shutil.copy(enh_onnx, weights / "deepfusionnet.onnx")
    rec = _json(capsys, ["info", "deepfusionnet", "--json"])
    assert rec["kind"] == "onnx" and rec["params"] == ENH_PARAMS and round(rec["gmacs"], 2) == 43.78


def test_engine_reads_sidecar_only(tmp_path, capsys):
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"\x00plan bytes")
    sidecar = {"model": "deepfusionnet", "precision": "fp16", "params": ENH_PARAMS,
               "inputs": [{"name": "input", "shape": [1, 3, 400, 600], "dtype": "float16"}]}
    (tmp_path / "m.fp16.engine.json").write_text(json.dumps(sidecar))
    rec = _json(capsys, ["info", str(engine), "--json"])
    assert rec["sha256"] == hashlib.sha256(b"\x00plan bytes").hexdigest()
    assert rec["precision"] == "fp16" and rec["params"] == ENH_PARAMS and rec["macs"] is None
    assert rec["inputs"][0]["shape"] == [1, 3, 400, 600]


def test_errors(tmp_path, capsys):
    assert main(["info", "deepfusionnet", "--size", "600by400"]) == 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff garbage")
    assert main(["info", str(bad)]) == 1
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and "WIDTHxHEIGHT" in errs[0] and "bad.onnx" in errs[1]


def test_conv_transpose_macs_count_each_input_pixel_times_its_kernel(tmp_path):
    """A U-Net's up-convolutions count too: MACs of ConvTranspose = input elements x Cout/groups x kH x kW."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w_up = numpy_helper.from_array(np.zeros((8, 4, 2, 2), np.float32), "w_up")  # Cin 8 -> Cout 4, 2x2 stride 2
    w_c = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w_c")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_c"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("ConvTranspose", ["h", "w_up"], ["y"], strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None, None])], [w_up, w_c])
    path = tmp_path / "up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    macs, _ = onnx_conv_macs(path, 16, 24)
    conv = 8 * 16 * 24 * 3 * 3 * 3
    up = 8 * 16 * 24 * 4 * 2 * 2
    assert macs == conv + up
