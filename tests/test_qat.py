"""Quantization-aware fine-tuning (`dfn train --qat`) and the export of its weights as an all-INT8 Q/DQ graph.

On generated pairs (64x48), at one thread: every convolution fake-quantized; the export puts Q/DQ on every
Conv's input and weight (INT8 weight initializers, per-channel scales on axis 0, zero points 0, float
biases), passes the TensorRT gate and runs in ONNX Runtime as the PyTorch fake-quant model computes; a
short --qat run resumes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

from deepfusionnet.cli import main  # noqa: E402
from deepfusionnet.errors import DFNError  # noqa: E402
from deepfusionnet.train import qat  # noqa: E402
from deepfusionnet.train.models import create_model  # noqa: E402
from deepfusionnet.train.weights import load_model, save_weights  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "runtime/weights/deepfusionnet.safetensors"
SMALL = ["--batch-size", "2", "--crop", "32", "--val-count", "2", "--val-group", "image", "--threads", "1",
         "--lr", "1e-4"]


@pytest.fixture(autouse=True)
def _one_thread(keep_torch_threads):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Six generated 64x48 pairs: smooth colour fields (high) and a dark, noisy copy (low)."""
    import cv2

    root = tmp_path_factory.mktemp("qat-pairs")
    rng = np.random.default_rng(0)
    for sub in ("low", "high"):
        (root / sub).mkdir()
    for i in range(6):
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
        high = np.clip(cv2.resize(coarse, (64, 48), interpolation=cv2.INTER_CUBIC), 0, 255)
        low = np.clip(high * 0.15 + rng.normal(0, 2, high.shape), 0, 255)
        cv2.imwrite(str(root / "high" / f"{i}.png"), high.astype(np.uint8))
        cv2.imwrite(str(root / "low" / f"{i}.png"), low.astype(np.uint8))
    return root


def frames(n: int = 2, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 48, 64, generator=g) * 0.3 for _ in range(n)]


@pytest.fixture(scope="module")
def qat_weights(tmp_path_factory) -> Path:
    """The shipped enhancer, fake-quantized and calibrated on generated frames, saved as dfn train does."""
    model, name = load_model(SHIPPED)
    qat.quantize_convs(model)
    qat.calibrate(model, frames(2), "percentile")
    path = tmp_path_factory.mktemp("qat-w") / "qat.safetensors"
    save_weights(model, name, path)
    return path


def test_every_conv_is_fake_quantized_and_calibrated():
    model = create_model("deepfusionnet").eval()
    x = frames(1)[0]
    with torch.no_grad():
        ref = model(x)
    count = qat.quantize_convs(model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert count == len(convs) == 46 and all(isinstance(m, qat.QuantConv2d) for m in convs)
    ranges = qat.calibrate(model, frames(2), "max")
    peaks = dict(ranges)
    ranges = qat.calibrate(model, frames(2), "percentile")
    assert len(ranges) == 46 and all(0 < ranges[k] <= peaks[k] * (1 + 1e-6) for k in ranges)
    assert any(ranges[k] < peaks[k] * 0.999 for k in ranges)  # the percentile clips some peaks
    mse = qat.calibrate(model, frames(2), "mse")
    assert all(0 < mse[k] <= peaks[k] * (1 + 1e-6) for k in mse) and mse != ranges
    with torch.no_grad():
        out = model(x)
        with qat.quantizers_off(model):
            assert torch.equal(model(x), ref)  # switched off, the float network
    assert 0 < (out - ref).abs().max() < 0.2


def test_frames_calibration_keeps_dark_frames_resolution():
    """The default calibration (75th percentile of per-frame peaks) gives a dark frame back far closer to the
    float network than ranges pooled over every frame, which a single bright frame sets."""
    model, _ = load_model(SHIPPED)
    qat.quantize_convs(model)
    g = torch.Generator().manual_seed(0)
    dark = [torch.rand(1, 3, 48, 64, generator=g) * 0.03 for _ in range(3)]
    bright = torch.rand(1, 3, 48, 64, generator=g)

    def fidelity(method: str) -> float:
        qat.calibrate(model, [*dark, bright], method)
        with torch.no_grad():
            q = model(dark[0])
            with qat.quantizers_off(model):
                f = model(dark[0])
        return float(-10 * torch.log10(((q - f) ** 2).mean()))

    assert fidelity("frames") > fidelity("max") + 4


def test_fake_quant_is_symmetric_int8_per_tensor_input_per_channel_weight():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    qat.quantize_convs(torch.nn.Sequential(torch.nn.ReLU6(), conv))  # an inner conv: no image centring
    assert not hasattr(conv, qat.OFFSET)
    conv.input_amax.fill_(0.5)
    x = torch.rand(1, 3, 8, 8) - 0.2
    s = 0.5 / 127
    xq = torch.clamp(torch.round(x / s), -128, 127) * s
    ws = conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127
    wq = torch.round(conv.weight.detach() / ws.view(-1, 1, 1, 1)) * ws.view(-1, 1, 1, 1)
    want = torch.nn.functional.conv2d(xq, wq, conv.bias, padding=1)
    assert torch.allclose(conv(x), want, atol=1e-5)
    # Saturation as QuantizeLinear's: [-128, 127] times the scale, zero point 0
    clipped = qat.fake_quant_tensor(torch.tensor([10.0, -10.0, 0.0]), s)
    assert torch.allclose(clipped, torch.tensor([127 * s, -128 * s, 0.0]))


def test_image_convs_are_centred_and_exact_at_the_border():
    """The convs that read the image quantize it centred on 0.5 (range 0.5: 1/254 steps, its 8 bits), after
    zero padding, so even border pixels get what the float conv of the INT8 image gives."""
    model = create_model("deepfusionnet").eval()
    qat.quantize_convs(model)
    assert [n for n, m in model.named_modules() if hasattr(m, qat.OFFSET)] == ["head.a.0", "head.b.0"]
    ranges = qat.calibrate(model, frames(2), "percentile")
    assert ranges["head.a.0"] == ranges["head.b.0"] == 0.5
    conv, x, s = model.head.b[0], frames(1)[0], 0.5 / 127  # 5x5, padding 2
    image = torch.clamp(torch.round((x - 0.5) / s), -128, 127) * s + 0.5  # the image as INT8 holds it
    want = torch.nn.functional.conv2d(image, qat.fake_quant_weight(conv.weight), conv.bias, padding=2)
    with torch.no_grad():
        got = conv(x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_weights_from_before_centring_load_uncentred(qat_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(qat_weights))
    old = {k: v for k, v in state.items() if not k.endswith("." + qat.OFFSET)}
    assert len(old) == len(state) - 2
    from safetensors import safe_open

    with safe_open(str(qat_weights), "pt") as f:
        meta = f.metadata()
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)
    model, _ = load_model(tmp_path / "old.safetensors")
    assert float(model.head.a[0].input_offset) == 0.0
    assert float(load_model(qat_weights)[0].head.a[0].input_offset) == 0.5


def test_weights_file_carries_the_ranges(qat_weights):
    from deepfusionnet.train.weights import read_metadata

    assert read_metadata(qat_weights)["quantization"] == qat.QAT_TAG
    model, name = load_model(qat_weights)
    assert name == "deepfusionnet" and qat.is_quantized(model)
    amax = [float(m.input_amax) for m in model.modules() if isinstance(m, qat.QuantConv2d)]
    assert len(amax) == 46 and all(a > 0 for a in amax) and len(set(amax)) > 10


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _const(graph, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in graph.initializer if t.name == name)


@pytest.fixture(scope="module")
def exported(qat_weights, pairs, tmp_path_factory) -> Path:
    from deepfusionnet.export.pipeline import ExportOptions, export_model

    out = tmp_path_factory.mktemp("qat-onnx") / "qat.onnx"
    opts = ExportOptions(precision="int8", check_data=pairs, check_images=2, threads=1, lint=False)
    result = export_model(qat_weights, out, opts)
    assert result.passed, result.parity.failures()
    return out


def test_export_quantizes_every_conv_input_and_weight(exported):
    from onnx import TensorProto

    proto = onnx.load(str(exported))
    graph, prod = proto.graph, _producers(proto.graph)
    inits = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 62
    weight_inputs = set()
    for conv in convs:
        x_dq, w_dq = prod[conv.input[0]], prod[conv.input[1]]
        assert x_dq.op_type == "DequantizeLinear" and prod[x_dq.input[0]].op_type == "QuantizeLinear"
        assert _const(graph, x_dq.input[1]).size == 1 and not _const(graph, x_dq.input[2]).any()
        assert w_dq.op_type == "DequantizeLinear" and inits[w_dq.input[0]].data_type == TensorProto.INT8
        cout = inits[w_dq.input[0]].dims[0]
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        assert axis == 0 and _const(graph, w_dq.input[1]).shape == (cout,)
        assert not _const(graph, w_dq.input[2]).any() and inits[w_dq.input[2]].data_type == TensorProto.INT8
        if len(conv.input) > 2:  # biases stay float, read directly
            assert inits[conv.input[2]].data_type == TensorProto.FLOAT
        weight_inputs.add(w_dq.input[0])
    assert len(weight_inputs) == 62  # one INT8 weight per Conv (CBAM's shared MLP included)
    assert not [t for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 4]


def test_export_passes_the_tensorrt_gate_and_records_int8(exported):
    from deepfusionnet.export.conformance import check_graph, errors

    proto = onnx.load(str(exported))
    for target in ("trt10", "trt11"):
        assert errors(check_graph(proto, target)) == []
    side = json.loads(exported.with_name(exported.name + ".json").read_text())
    assert side["precision"] == "int8" and side["conformance"]["trt10"] == "pass"
    cal = side["calibration"]
    assert cal["method"] == "qat" and cal["convs_int8"] == cal["convs_total"] == 62
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["dfn.precision"] == "int8"


def test_onnxruntime_matches_the_torch_fake_quant_model(exported, qat_weights):
    from deepfusionnet.runtime.backends.onnxruntime import exact_int8

    model, _ = load_model(qat_weights)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    exact_int8(so)
    sess = ort.InferenceSession(str(exported), so, providers=["CPUExecutionProvider"])
    float_model, _ = load_model(SHIPPED)
    for x in frames(2, seed=5):
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want, fp32 = model(x).numpy(), float_model(x).numpy()
        psnr = 10 * np.log10(1 / np.mean((got - want) ** 2))
        psnr_fp32 = 10 * np.log10(1 / np.mean((got - fp32) ** 2))
        assert psnr >= 40 and psnr > psnr_fp32 + 3  # tracks the fake-quant model, not the float one


def test_qat_weights_export_only_as_int8(qat_weights, tmp_path):
    from deepfusionnet.export.pipeline import ExportOptions, export_model

    with pytest.raises(DFNError, match="--precision int8"):
        export_model(qat_weights, tmp_path / "x.onnx", ExportOptions(precision="fp16", check=False))
    assert not (tmp_path / "x.onnx").exists()


def test_qat_graph_without_input_qdq_is_refused():
    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export.qat import quantize_conv_weights

    proto = onx.onnx_from_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1)).eval())
    with pytest.raises(DFNError, match="quantization-aware"):
        quantize_conv_weights(proto)


def test_qat_training_resumes_exactly(pairs, tmp_path, capsys):
    from safetensors.torch import load_file

    args = ["train", "--qat", "--data", pairs, "--epochs", "2", *SMALL, "--freeze-bn"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([str(a) for a in [*args, "--out", straight]]) == 0
    err = capsys.readouterr().err
    assert "QAT: 46 convolutions fake-quantized" in err and "training with fp32" in err
    config = json.loads((straight / "config.json").read_text())
    assert config["init"] == config["teacher"] == "deepfusionnet"  # it distils its float init
    assert main([str(a) for a in [*args, "--out", split, "--max-steps", "1"]]) == 0
    assert main([str(a) for a in [*args, "--out", split, "--resume"]]) == 0
    assert "resuming" in capsys.readouterr().err
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(split / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    amax = [k for k in a if k.endswith(".input_amax")]
    assert len(amax) == 46
    # The calibrated network is validated before the first step (epoch 0), the resumed run's log alike.
    for run in (straight, split):
        rows = json.loads((run / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[0]["val_psnr"] > 0
    model, _ = load_model(straight / "last.safetensors")
    init, _ = load_model(SHIPPED)
    moved = [k for k, v in init.state_dict().items() if v.is_floating_point() and not torch.equal(v, a[k])]
    assert moved  # it trained


def test_learned_ranges_train_and_resume_exactly(pairs, tmp_path, capsys):
    """--qat-ranges learned: the calibrated input ranges move with training (fixed ones stay as calibrated),
    and a run cut short resumes to the same weights and ranges (their optimizer groups included)."""
    from safetensors.torch import load_file

    args = ["train", "--qat", "--data", pairs, "--epochs", "2", *SMALL, "--freeze-bn", "--lr", "1e-3"]
    fixed, straight, split = tmp_path / "fixed", tmp_path / "straight", tmp_path / "split"
    assert main([str(a) for a in [*args, "--out", fixed]]) == 0
    learned = [*args, "--qat-ranges", "learned"]
    assert main([str(a) for a in [*learned, "--out", straight]]) == 0
    assert main([str(a) for a in [*learned, "--out", split, "--max-steps", "1"]]) == 0
    assert main([str(a) for a in [*learned, "--out", split, "--resume"]]) == 0
    capsys.readouterr()
    f, a, b = (load_file(str(d / "last.safetensors")) for d in (fixed, straight, split))
    assert a.keys() == b.keys() == f.keys() and all(torch.equal(a[k], b[k]) for k in a)
    amax = [k for k in a if k.endswith(".input_amax")]
    moved = [k for k in amax if not torch.allclose(a[k], f[k], rtol=1e-4)]
    assert len(moved) > len(amax) // 2, f"{len(moved)} of {len(amax)} ranges moved"
    model, _ = load_model(straight / "last.safetensors")  # loads as a fake-quant model, ranges as buffers
    assert qat.is_quantized(model) and all(float(m.input_amax) > 0 for m in model.modules()
                                           if isinstance(m, qat.QuantConv2d))


def test_qat_options_are_checked(pairs, tmp_path, capsys):
    from deepfusionnet.train.trainer import TrainConfig

    code = main(["train", "--qat", "--data", str(pairs), "--out", str(tmp_path / "r"), "--unpaired", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "--qat" in err and "--unpaired" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(DFNError, match="--init"):
        TrainConfig(data=str(pairs), qat=True).validate()
    with pytest.raises(DFNError, match="--qat-calib"):
        TrainConfig(data=str(pairs), qat=True, init="deepfusionnet", qat_calib="entropy").validate()
    with pytest.raises(DFNError, match="--qat-ranges"):
        TrainConfig(data=str(pairs), qat=True, init="deepfusionnet", qat_ranges="lsq").validate()


def test_qat_distils_its_float_init_unless_told_otherwise():
    import argparse

    from deepfusionnet.commands.train import teacher_of

    def args(**kw):
        return argparse.Namespace(**{"teacher": None, "qat": True, "init": None, "model": "deepfusionnet",
                                     "targets": None, **kw})

    assert teacher_of(args()) == "deepfusionnet"
    assert teacher_of(args(init="mine.safetensors")) == "mine.safetensors"
    assert teacher_of(args(teacher="none")) is None
    assert teacher_of(args(targets="dir")) is None  # a folder of teacher outputs instead
    assert teacher_of(args(qat=False)) is None
    assert teacher_of(args(qat=False, teacher="big.safetensors")) == "big.safetensors"


def test_sr_model_trains_and_exports_with_every_conv_int8(pairs, tmp_path, capsys):
    """The SR model takes the same path: dfn train --qat --model deepfusionnet-sr (from its shipped weights),
    then an export whose every Conv, companions included, runs INT8 and which tracks its fake-quant model."""
    from deepfusionnet.export.pipeline import ExportOptions, export_model
    from deepfusionnet.runtime.tile_context import companion_path

    out = tmp_path / "sr"
    assert main([str(a) for a in ["train", "--qat", "--model", "deepfusionnet-sr", "--data", pairs, "--epochs",
                                  "1", *SMALL, "--crop", "16", "--freeze-bn", "--out", out]]) == 0
    assert "convolutions fake-quantized" in capsys.readouterr().err
    graph = tmp_path / "sr-int8.onnx"
    opts = ExportOptions(precision="int8", check_data=pairs, check_images=2, threads=1, lint=False)
    res = export_model(out / "last.safetensors", graph, opts)
    assert res.passed and res.parity.summary()["psnr_min"] >= 40, res.parity.summary()
    for path in (graph, companion_path(graph, "context"), companion_path(graph, "tile")):
        g = onnx.load(str(path)).graph
        prod = _producers(g)
        convs = [n for n in g.node if n.op_type == "Conv"]
        assert convs and all(prod[c.input[0]].op_type == "DequantizeLinear" and
                             prod[c.input[1]].op_type == "DequantizeLinear" for c in convs)
