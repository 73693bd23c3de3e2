"""Export: every precision from the shipped weights runs on ONNX Runtime (and OpenVINO) within its
tolerance against PyTorch on real eval15 frames; resize parity; odd sizes; metadata and sidecars.

Graphs are exported once per session (dynamic H/W, no built-in check), each when a test first needs it,
and reused by every test. The enhancer's INT8 export dominates (about 90 s on a 2-core CPU: 32 calibration
frames and the fallback search; fewer frames miss the tolerance), so the tests that need it are marked
slow and ``-m "not slow"`` exports the other five only (about 40 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from deepfusionnet.errors import DFNError  # noqa: E402
from deepfusionnet.export.pipeline import ExportOptions, export_model  # noqa: E402
from deepfusionnet.runtime.measure.compare import TOLERANCES, run_parity  # noqa: E402
from deepfusionnet.runtime.enhancer import open_enhancer  # noqa: E402
from deepfusionnet.runtime.images import read_image, write_image  # noqa: E402
from deepfusionnet.runtime.measure.pairs import find_items  # noqa: E402
from deepfusionnet.runtime.processing import to_tensor  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
# the enhancer's precisions, its INT8 marked slow (its export alone takes most of this file's time)
ENHANCER_PRECISIONS = ("fp32", "fp16", pytest.param("int8", marks=pytest.mark.slow))


@pytest.fixture(scope="session")
def calib_dir(lol_train) -> Path:
    return lol_train / "low"


class Exports:
    """{(model, precision): path} for the shipped enhancer and SR weights, dynamic H/W; each graph is
    exported the first time it is asked for, ``items()`` exports all six."""

    KEYS = tuple((model, precision) for model in ("deepfusionnet", "deepfusionnet-sr")
                 for precision in PRECISIONS)

    def __init__(self, folder: Path, calib_dir: Path) -> None:
        self.folder, self.calib_dir, self.paths = folder, calib_dir, {}

    def __getitem__(self, key: tuple[str, str]) -> Path:
        if key not in self.paths:
            model, precision = key
            path = self.folder / f"{model}-{precision}.onnx"
            # The enhancer takes the CLI's default path (32 frames at 320x240, onnxslim, percentile):
            # with 8 or 16 frames the shipped weights' INT8 misses its tolerance (24-26 dB on these
            # crops). The SR model takes a quick path (8 frames, MinMax) to keep the suite fast.
            sr = model.endswith("-sr")
            opts = ExportOptions(precision=precision, size=None, check=False, calib_dir=self.calib_dir,
                                 calib_count=8 if sr else 32, calib_size=(320, 240), simplify=not sr,
                                 calib_method="minmax" if sr else "percentile")
            export_model(model, path, opts)
            self.paths[key] = path
        return self.paths[key]

    def items(self) -> list[tuple[tuple[str, str], Path]]:
        return [(key, self[key]) for key in self.KEYS]


@pytest.fixture(scope="session")
def exported(tmp_path_factory, calib_dir) -> Exports:
    return Exports(tmp_path_factory.mktemp("export"), calib_dir)


@pytest.fixture(scope="session")
def eval_pairs(tmp_path_factory, lol_eval15) -> Path:
    """Crops (296x200) of two eval15 pairs, the darkest frame (23.png) among them: the hard case for INT8."""
    root = tmp_path_factory.mktemp("eval2")
    for name in ("23.png", "22.png"):
        for sub in ("low", "high"):
            write_image(root / sub / name, read_image(lol_eval15 / sub / name)[100:300, 152:448])
    return root


@pytest.fixture(scope="session")
def sr_frames(tmp_path_factory, lol_eval15) -> Path:
    """Two eval15 crops at odd sizes for the SR model (its output is 2x, so there is no ground truth)."""
    root = tmp_path_factory.mktemp("srframes")
    write_image(root / "a.png", read_image(lol_eval15 / "low" / "23.png")[:203, :301])
    write_image(root / "b.png", read_image(lol_eval15 / "low" / "1.png")[100:300, 150:390])
    return root


def cached(fn):
    """Run the PyTorch reference once per frame for every precision."""
    memo = {}

    def run(x):
        key = (x.shape, x.tobytes())
        if key not in memo:
            memo[key] = fn(x)
        return memo[key]

    return run


@pytest.fixture(scope="session")
def torch_ref():
    return {m: cached(open_enhancer(m, "torch").run_tensor) for m in ("deepfusionnet", "deepfusionnet-sr")}


@pytest.mark.parametrize("precision", ENHANCER_PRECISIONS)
def test_enhancer_precision_meets_tolerance_on_eval15(exported, eval_pairs, torch_ref, precision):
    cand = open_enhancer(str(exported["deepfusionnet", precision]), "onnxruntime")
    report = run_parity(torch_ref["deepfusionnet"], cand.run_tensor, find_items(eval_pairs), cand.artifact.precision)
    s = report.summary()
    assert report.precision == precision
    assert s["images"] == 2 and "gt_drop" in s
    assert s["nonfinite"] == 0
    assert report.passed, report.lines()
    if precision != "fp32":  # a lower precision really is lower: not a copy of the FP32 graph
        assert s["max_abs"] > TOLERANCES["fp32"].max_abs


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sr_precision_meets_tolerance(exported, sr_frames, torch_ref, precision):
    cand = open_enhancer(str(exported["deepfusionnet-sr", precision]), "onnxruntime")
    report = run_parity(torch_ref["deepfusionnet-sr"], cand.run_tensor, find_items(sr_frames), precision)
    assert report.images[0].shape == (1, 3, 406, 602)  # 2x of 203x301
    assert report.passed, report.lines()


@pytest.mark.slow  # every graph, the enhancer's INT8 among them
def test_graphs_carry_precision_metadata_and_sidecars(exported):
    for (model, precision), path in exported.items():
        proto = onnx.load(path)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["dfn.model"] == model and meta["dfn.precision"] == precision
        assert meta["dfn.scale"] == ("2" if model.endswith("-sr") else "1") and meta["dfn.multiple"] == "8"
        assert proto.opset_import[0].version >= 17
        types = {init.data_type for init in proto.graph.initializer}
        ops = {n.op_type for n in proto.graph.node}
        if precision == "fp16":
            assert onnx.TensorProto.FLOAT16 in types
        if precision == "int8":
            q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
            assert q and "DequantizeLinear" in ops
            # symmetric: every zero point is 0 (TensorRT accepts nothing else)
            zps = {i.name: i for i in proto.graph.initializer}
            for node in q:
                assert not np.any(onnx.numpy_helper.to_array(zps[node.input[2]]))
            # biases stay float: no DequantizeLinear reads an integer wider than 8 bits (TensorRT refuses it)
            dq_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
            wide = [i.name for i in proto.graph.initializer if i.name in dq_inputs
                    and i.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4)]
            assert wide == []
        else:
            assert "QuantizeLinear" not in ops
        # FP32 in, FP32 out, whatever the precision inside
        for v in list(proto.graph.input) + list(proto.graph.output):
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        side = json.loads(Path(f"{path}.json").read_text())
        assert side["precision"] == precision and side["model"] == model
        assert side["onnx_sha256"] and side["source_weights_sha256"] and side["tools"]["onnx"]
        assert side["inputs"][0]["shape"][2:] == ["height", "width"]
        if precision == "int8":
            assert side["calibration"]["count"] == (32 if model == "deepfusionnet" else 8)
            assert side["calibration"]["symmetric"]
            if model == "deepfusionnet":
                assert side["calibration"]["method"] == "percentile"
                # the fallback search checked other frames than it calibrated on and met its target
                fb = side["calibration"]["fallback"]
                assert len(fb["frames"]) == 8 and fb["target_db"] == 35.0
                assert fb["steps"][-1]["worst_db"] >= 35.0
                kept = {n.split("/")[1] for n in side["calibration"]["excluded_nodes"] if n.count("/") > 1}
                assert set(fb["stages_kept_float"]) <= kept


@pytest.mark.slow  # every graph, the enhancer's INT8 among them
@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_exported_graphs_pass_tensorrt_conformance_and_polygraphy_lint(exported, tmp_path, fixed):
    """Both models at every precision, dynamic as exported and pinned to a fixed size as --size pins
    them, pass the TensorRT 10 and 11 rules (the export gate checked the dynamic ones already; this
    re-checks the files) and Polygraphy's lint, a tool this project did not write."""
    pytest.importorskip("polygraphy")
    from deepfusionnet.export.conformance import check_graph, errors, polygraphy_lint
    from deepfusionnet.export.onnx import fix_input_size

    for (model, precision), path in exported.items():
        proto = onnx.load(path)
        if fixed:
            proto = fix_input_size(proto, 320, 240)
            path = tmp_path / f"{model}-{precision}-fixed.onnx"
            onnx.save(proto, path)
        else:
            side = json.loads(Path(f"{path}.json").read_text())
            assert side["conformance"] == {"trt10": "pass", "trt11": "pass", "polygraphy_lint": "pass"}
        for target in ("trt10", "trt11"):
            assert errors(check_graph(proto, target)) == [], (model, precision, target)
        if fixed:  # DLA needs the fixed size; FP16/INT8 graphs carry no DLA errors then
            assert errors(check_graph(proto, "trt10", dla=True)) == [], (model, precision)
        if fixed:  # the export gate linted the dynamic files (the sidecar says so above)
            assert errors(polygraphy_lint(path, proto)) == [], (model, precision)


def test_fp16_keeps_global_reductions_fp32(exported):
    side = json.loads(Path(f"{exported['deepfusionnet', 'fp16']}.json").read_text())
    kept = side["fp16"]["kept_fp32"]
    reductions = [name for name in kept if "Reduce" in name]
    assert len(reductions) == 16  # CBAM channel attention: mean and max over H, W, in 8 stages
    assert all("Reduce" in name or "BatchNormalization" in name for name in kept)  # + large-weight BNs
    proto = onnx.load(exported["deepfusionnet", "fp16"])
    reduce_in = {n.input[0] for n in proto.graph.node if n.name in reductions}
    producers = {o: n for n in proto.graph.node for o in n.output}
    assert all(producers[t].op_type == "Cast" for t in reduce_in)  # fed through a Cast to FP32


def test_fp16_keeps_batchnorm_with_large_statistics_exact():
    """A BatchNorm variance past the converter's 1e4 clamp (a trained candidate had 1.8e5) must not be
    clamped: clamped, it rescales the layer's output by sqrt(1.8e5 / 1e4)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from deepfusionnet.export.precision import fp16_from_onnx, large_weight_nodes

    stats = {"scale": [1.0, 1.0], "bias": [0.0, 0.5], "mean": [3000.0, 0.1], "var": [1.8e5, 2.0]}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in stats.items()]
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], name="bn")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert large_weight_nodes(proto.graph) == ["bn"]
    half, kept = fp16_from_onnx(proto)
    assert "bn" in kept
    rng = np.random.default_rng(0)
    x = np.stack([3000 + 424 * rng.standard_normal((8, 8)), rng.standard_normal((8, 8))])[None].astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref, out = run(proto), run(half)
    assert np.abs(ref).max() > 1.0  # normalized values, not a degenerate layer
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_int8_keeps_full_resolution_convs_float():
    """Encoder and decoder convs at the input's resolution stay float; the pooled convs are quantized
    (which of them stay float too is measured per model, below)."""
    from onnx import TensorProto, helper, numpy_helper

    from deepfusionnet.errors import DFNError
    from deepfusionnet.export.precision import default_int8_exclusions, full_resolution_convs, int8_exclusions

    w = lambda name, cin: numpy_helper.from_array(np.ones((4, cin, 3, 3), np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="enc_full", pads=[1] * 4),
        helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w1"], ["b"], name="enc_half", pads=[1] * 4),
        helper.make_node("Conv", ["b", "w1"], ["c"], name="enc_quarter", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Resize", ["c", "", "s"], ["u1"], name="up1", mode="nearest"),
        helper.make_node("Conv", ["u1", "w1"], ["d1"], name="dec_first", pads=[1] * 4),
        helper.make_node("Resize", ["d1", "", "s"], ["u"], name="up2", mode="nearest"),
        helper.make_node("Concat", ["u", "a"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["d"], name="dec_full", pads=[1] * 4),
        helper.make_node("Conv", ["d", "w1"], ["e"], name="last", pads=[1] * 4),
        helper.make_node("Sigmoid", ["e"], ["y"], name="sig"),
    ]
    inits = [w("w0", 3), w("w1", 4), w("w2", 8), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    assert full_resolution_convs(graph) == ["enc_full", "dec_full", "last"]
    excluded = default_int8_exclusions(graph)
    assert not {"enc_half", "enc_quarter", "dec_first"} & set(excluded)
    assert {"enc_full", "dec_full", "last", "sig"} <= set(excluded)
    assert int8_exclusions(graph) == sorted(excluded)
    chosen = int8_exclusions(graph, keep_float=("enc_half",), quantize=("dec_full",))
    assert "enc_half" in chosen and "dec_full" not in chosen and "enc_quarter" not in chosen
    with pytest.raises(DFNError, match="'dec9' matches no convolution"):
        int8_exclusions(graph, keep_float=("dec9",))


def _mixed_range_graph():
    """enc (3->4 conv) -> per-channel scale (1000, 1, 1, 1) -> dec (4->3 conv reading only the small
    channels) -> sigmoid. One per-tensor INT8 scale for dec's input leaves the small channels ~0.1 of
    a level, so INT8 dec loses the picture; enc quantizes fine."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_dec = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    w_dec[:, 0] = 0  # the huge channel only sets the range
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w_enc"),
             numpy_helper.from_array(np.array([1000, 1, 1, 1], np.float32).reshape(1, 4, 1, 1), "gain"),
             numpy_helper.from_array(w_dec, "w_dec")]
    nodes = [helper.make_node("Conv", ["x", "w_enc"], ["a"], name="/enc/Conv", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="/enc/Relu"),
             helper.make_node("Mul", ["r", "gain"], ["m"], name="/enc/Mul"),
             helper.make_node("Conv", ["m", "w_dec"], ["d"], name="/dec/Conv", pads=[1] * 4),
             helper.make_node("Sigmoid", ["d"], ["y"], name="/head/Sigmoid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mixed_range_frames():
    """A calibration reader over 4 random frames for ``_mixed_range_graph`` and 2 other frames to check on."""
    rng = np.random.default_rng(1)
    frames = [{"x": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(6)]

    class Reader:
        def __init__(self):
            self._it = iter(frames[:4])

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(frames[:4])

    return Reader, frames[4:]


def test_fallback_checks_frames_it_did_not_calibrate_on(lol_train):
    from deepfusionnet.export.precision import calibration_images

    calib = calibration_images(lol_train / "low", 32)
    checks = calibration_images(lol_train / "low", 16, skip=calib)
    assert len(calib) == 32 and len(checks) == 16 and not set(checks) & set(calib)


def test_int8_fallback_keeps_the_stage_that_breaks_float():
    """The search measures INT8 against FP32 on check frames and keeps float the stage whose per-tensor
    scale cannot hold its input; a stage the user asked to quantize is never chosen; 0 dB turns it off."""
    from deepfusionnet.export.int8_fallback import conv_stage, int8_with_fallback

    assert conv_stage("/dec1/convs/convs.0/convs.0.0/Conv") == "dec1" and conv_stage("plain") == "plain"
    proto = _mixed_range_graph()
    Reader, checks = _mixed_range_frames()
    off = int8_with_fallback(proto, Reader(), checks, "minmax", target_db=0)
    assert off.steps == [] and {"/enc/Conv", "/dec/Conv"}.isdisjoint(off.excluded)
    found = int8_with_fallback(proto, Reader(), checks, "minmax", target_db=35)
    assert found.steps[0]["float"] is None and found.steps[0]["worst_db"] < 30  # INT8 dec loses the picture
    assert found.stages_kept_float == ["dec"] and found.steps[-1]["worst_db"] >= 35
    assert "/dec/Conv" in found.excluded and "/enc/Conv" not in found.excluded
    assert {n.op_type for n in found.proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}  # enc stays INT8
    held = int8_with_fallback(proto, Reader(), checks, "minmax", protect=["/dec/Conv"], target_db=35)
    assert "dec" not in held.stages_kept_float and "/dec/Conv" not in held.excluded


def test_runtime_runs_int8_exactly_on_cpus_without_vnni(tmp_path):
    """An INT8 conv whose 8-bit products are large saturates ORT's default U8S8 kernels on x86 CPUs
    without VNNI (AVX2: 14.7 dB against FP32 here); the runtime asks ORT for exact kernels, so the file
    scores what it computes on every CPU (on VNNI CPUs and elsewhere the check passes either way)."""
    from deepfusionnet.export.int8_fallback import int8_with_fallback
    from deepfusionnet.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from deepfusionnet.runtime.metrics import psnr

    proto = _mixed_range_graph()
    Reader, checks = _mixed_range_frames()
    int8 = int8_with_fallback(proto, Reader(), checks, "minmax", exclude=["/dec/Conv"], target_db=0)
    assert "/enc/Conv" not in int8.excluded
    (tmp_path / "f.onnx").write_bytes(proto.SerializeToString())
    (tmp_path / "q.onnx").write_bytes(int8.proto.SerializeToString())
    ref, q = (OnnxRuntimeBackend(tmp_path / n, threads=1).session for n in ("f.onnx", "q.onnx"))
    for f in checks:
        assert psnr(ref.run(None, f)[0], q.run(None, f)[0]) > 35


def test_int8_calibrates_in_chunks_with_the_same_ranges():
    """Chunked calibration (bounded memory) serves every frame once, in equal chunks, and gives MinMax
    the same ranges as one pass over all frames."""
    from onnx import TensorProto, helper, numpy_helper

    from deepfusionnet.export.precision import calibration_chunk, int8_from_onnx

    assert [calibration_chunk(n, 8) for n in (32, 30, 7, 13)] == [8, 6, 7, 1]
    rng = np.random.default_rng(0)
    frames = [rng.random((1, 3, 16, 16), dtype=np.float32) * (i + 1) for i in range(6)]

    class Reader:
        def __init__(self):
            self.passes, self._it = [], iter(range(len(frames)))

        def __len__(self):
            return len(frames)

        def set_range(self, start_index, end_index):
            self.passes.append([])
            self._it = iter(range(start_index, end_index))

        def get_next(self):
            i = next(self._it, None)
            if i is None:
                return None
            if self.passes:
                self.passes[-1].append(i)
            return {"x": frames[i]}

    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["y"], name="c1", pads=[1] * 4)]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), "w1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def scales(chunk):
        reader = Reader()
        q, _, _ = int8_from_onnx(proto, reader, "minmax", exclude=[], chunk=chunk)
        vals = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
        return reader.passes, {n.input[0]: float(vals[n.input[1]]) for n in q.graph.node
                               if n.op_type == "QuantizeLinear" and vals[n.input[1]].ndim == 0}

    passes, chunked = scales(2)
    assert passes == [[0, 1], [2, 3], [4, 5]]
    none, whole = scales(0)
    assert none == [] and set(chunked) == set(whole) and {"x", "r"} <= set(whole)
    assert chunked == pytest.approx(whole, rel=1e-6)


def test_bare_onnx_resolves_from_metadata(exported, tmp_path):
    bare = tmp_path / "bare.onnx"
    shutil.copy(exported["deepfusionnet-sr", "fp16"], bare)  # no sidecar beside it
    enh = open_enhancer(str(bare), "onnxruntime")
    assert (enh.artifact.model, enh.artifact.scale, enh.artifact.precision) == ("deepfusionnet-sr", 2, "fp16")
    y = enh(np.zeros((17, 23, 3), np.uint8))
    assert y.shape == (34, 46, 3)


@pytest.mark.parametrize("h,w", [(1, 1), (37, 53), (203, 129)])
def test_odd_sizes_through_runtime_padding(exported, lol_eval15, torch_ref, h, w):
    frame = read_image(lol_eval15 / "low" / "111.png")[100:100 + h, 200:200 + w]
    cand = open_enhancer(str(exported["deepfusionnet", "fp32"]), "onnxruntime")
    x = to_tensor(frame)
    a, b = torch_ref["deepfusionnet"](x), cand.run_tensor(x)
    assert a.shape == b.shape == (1, 3, h, w)
    assert np.abs(a - b).max() <= TOLERANCES["fp32"].max_abs


def test_fixed_size_export_pads_smaller_frames(tmp_path, eval_pairs):
    path = tmp_path / "fixed.onnx"
    result = export_model("deepfusionnet-sr", path, ExportOptions(size=(160, 120), check=True,
                                                                   check_data=eval_pairs, check_images=1))
    assert result.passed, result.parity.lines()
    proto = onnx.load(path)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 120, 160]
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 3, 240, 320]
    enh = open_enhancer(str(path), "onnxruntime")
    assert enh.fixed_size == (120, 160)
    # smaller than the graph: padded; larger: tiled; both come back at exactly 2x
    assert enh(np.full((50, 70, 3), 40, np.uint8)).shape == (100, 140, 3)
    assert enh(np.full((130, 300, 3), 40, np.uint8)).shape == (260, 600, 3)
    side = json.loads(Path(f"{path}.json").read_text())
    assert side["parity"]["onnxruntime"]["passed"] and side["size"] == [160, 120]


def test_resize_x2_matches_torch():
    """Bilinear x2, align_corners=False (the model's upsampler) agrees between torch and ONNX Runtime."""
    import io

    import onnxruntime as ort

    from deepfusionnet.train.models.blocks import upsample2x

    class Up(torch.nn.Module):
        def forward(self, x):
            return upsample2x(x)

    buf = io.BytesIO()
    torch.onnx.export(Up(), (torch.rand(1, 3, 8, 8),), buf, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    (resize,) = [n for n in proto.graph.node if n.op_type == "Resize"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    assert attrs["mode"] == b"linear" and attrs["coordinate_transformation_mode"] == b"half_pixel"
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for h, w in [(5, 7), (1, 1), (64, 48)]:
        x = np.random.default_rng(h).random((1, 3, h, w), dtype=np.float32)
        (y,) = sess.run(None, {"x": x})
        ref = upsample2x(torch.from_numpy(x)).numpy()
        assert y.shape == (1, 3, 2 * h, 2 * w)
        np.testing.assert_allclose(y, ref, atol=1e-6)


@pytest.mark.parametrize("precision", ENHANCER_PRECISIONS)
def test_openvino_runs_every_precision(exported, sr_frames, torch_ref, precision):
    pytest.importorskip("openvino")
    from deepfusionnet.runtime.backends.openvino import OpenVinoBackend
    from deepfusionnet.runtime.enhancer import Enhancer

    path = exported["deepfusionnet", precision]
    artifact = open_enhancer(str(path), "onnxruntime").artifact
    cand = Enhancer(OpenVinoBackend(path, precision="f32"), artifact)
    report = run_parity(torch_ref["deepfusionnet"], cand.run_tensor, find_items(sr_frames, 1), precision)
    if precision != "int8":
        assert report.passed, report.lines()
    else:
        # OpenVINO 2026.4's CPU plugin runs this symmetric Q/DQ graph but far from ONNX Runtime's
        # result (about 20 dB vs FP32 where ONNX Runtime gets 45 dB): runs, finite, not within tolerance.
        # Tracked in docs/export.md; runtime.measure.auto's 30 dB sanity gate keeps it from being picked.
        assert report.summary()["nonfinite"] == 0 and report.summary()["psnr_min"] > 12
        assert report.images[0].shape == (1, 3, 203, 301)


def test_export_refuses_bad_arguments(tmp_path):
    with pytest.raises(DFNError, match="multiples of 8"):
        export_model("deepfusionnet-sr", tmp_path / "a.onnx", ExportOptions(size=(100, 75), check=False))
    with pytest.raises(DFNError, match=r"\.onnx"):
        export_model("deepfusionnet-sr", tmp_path / "a.engine", ExportOptions(check=False))
    with pytest.raises(DFNError, match="precision"):
        export_model("deepfusionnet-sr", tmp_path / "a.onnx", ExportOptions(precision="int4"))
    with pytest.raises(DFNError, match="not a shipped model"):
        export_model("nosuchmodel", tmp_path / "a.onnx")


def test_simplified_export_is_byte_for_byte_repeatable(tmp_path):
    """The same weights give the same file in fresh processes (onnxslim's value_info once varied with the hash seed)."""
    code = ("import sys; from pathlib import Path; "
            "from deepfusionnet.export.pipeline import ExportOptions, export_model; "
            "export_model('deepfusionnet-sr', Path(sys.argv[1]), ExportOptions(size=None, check=False))")
    graphs = []
    for seed in ("1", "2"):
        out = tmp_path / f"sr-{seed}.onnx"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        graphs.append(out.read_bytes())
    assert graphs[0] == graphs[1]
    names = [v.name for v in onnx.load_from_string(graphs[0]).graph.value_info]
    assert names and len(names) == len(set(names))


def test_cli_export_writes_graph_sidecar_and_checks(tmp_path, samples, capsys):
    from deepfusionnet.cli import main

    out = tmp_path / "sr.onnx"
    rc = main(["export", "deepfusionnet-sr", "-o", str(out), "--size", "64x48", "--no-simplify",
               "--check-data", str(samples / "lol-22.png"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["parity"]["onnxruntime"]["passed"] and doc["size"] == [64, 48]
    assert json.loads(Path(f"{out}.json").read_text())["onnx_sha256"] == doc["onnx_sha256"]
    assert "PASS" in captured.err
    assert main(["export", "deepfusionnet-sr", "-o", str(out), "--size", "63x48", "--no-check"]) == 1
    assert "multiples of 8" in capsys.readouterr().err
    assert main(["export", "deepfusionnet-sr", "-o", str(out), "--keep-float", "/dec2/", "--no-check"]) == 1
    assert "use them with --precision int8" in capsys.readouterr().err


def test_int8_export_needs_calibration_frames_and_leaves_nothing_behind(tmp_path, samples):
    out = tmp_path / "sr.int8.onnx"
    with pytest.raises(DFNError, match="INT8 export needs --calib DIR"):
        export_model("deepfusionnet-sr", out, ExportOptions(precision="int8"))
    assert not out.exists() and not Path(f"{out}.json").exists()
    # a failure after the graph was written (here: check images that are not images) removes it again
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    with pytest.raises(DFNError):
        export_model("deepfusionnet-sr", out, ExportOptions(check_data=junk, lint=False))
    assert not out.exists() and not Path(f"{out}.json").exists()


def test_int8_quantization_keeps_stdout_clean(capsys):
    """ONNX Runtime prints its calibration steps; `dfn export --json` must print only JSON on stdout."""
    from deepfusionnet.export.precision import int8_from_onnx

    Reader, _ = _mixed_range_frames()
    q, _, _ = int8_from_onnx(_mixed_range_graph(), Reader(), "percentile", exclude=[])
    assert capsys.readouterr().out == ""
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)


@pytest.mark.slow
def test_export_from_an_installed_wheel_without_the_repository(tmp_path):
    """`pip install deepfusionnet` ships the sample frames the defaults need: an FP32 export checks against
    them from a folder with no checkout in sight, and INT8 without --calib is one line with nothing left."""
    repo = Path(__file__).resolve().parents[1]
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(repo), "--no-deps", "-w", str(wheels)], check=True, timeout=300)
    (wheel,) = wheels.glob("deepfusionnet-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import sys, deepfusionnet; from deepfusionnet.cli import main; "
            "assert deepfusionnet.__file__.startswith(sys.argv[1]), deepfusionnet.__file__; "
            "sys.exit(main(sys.argv[2:]))")
    dfn = [sys.executable, "-c", code, str(site), "export", "deepfusionnet-sr", "--no-lint", "-o"]
    ok = subprocess.run([*dfn, "sr.onnx"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert "deepfusionnet/samples/night" in ok.stderr and "PASS" in ok.stderr
    bad = subprocess.run([*dfn, "sr.int8.onnx", "--precision", "int8"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "--calib" in bad.stderr
    assert sorted(p.name for p in work.iterdir()) == ["sr.context.onnx", "sr.onnx", "sr.onnx.json", "sr.tile.onnx"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model,precision,size", [("deepfusionnet", "fp32", (320, 240)),
                                                  ("deepfusionnet", "fp16", (320, 240)),
                                                  ("deepfusionnet-sr", "fp32", (160, 120))])
def test_tiles_of_an_export_agree_with_its_whole_frame(exported, backend, model, precision, size):
    """The .context/.tile companions pass the TensorRT conformance gate and make 2x2 tiles agree with the
    whole frame at >= 40 dB on ONNX Runtime and OpenVINO (without them: the seams of pooled attention)."""
    import cv2
    from dataclasses import replace

    from deepfusionnet.export.conformance import check_graph, errors, load_model
    from deepfusionnet.runtime.metrics import psnr
    from deepfusionnet.runtime.samples import sample_dir
    from deepfusionnet.runtime.tile_context import companion_path

    if backend == "openvino":
        pytest.importorskip("openvino")
    path = exported[model, precision]
    for role in ("context", "tile"):
        graph = load_model(companion_path(path, role))
        assert not errors(check_graph(graph, "trt10")) and not errors(check_graph(graph, "trt11"))
    assert json.loads(path.with_name(path.name + ".json").read_text())["tiles"]["tile"] == \
        companion_path(path, "tile").name
    from deepfusionnet.commands.info import describe

    assert describe(str(path), 64, 64, "auto")["tile_companions"] == [companion_path(path, r).name
                                                                      for r in ("context", "tile")]
    e = open_enhancer(str(path), backend, gate=False)
    w, h = size
    img = cv2.resize(read_image(sample_dir() / "dicm-01.jpg"), (w, h), interpolation=cv2.INTER_AREA)
    side = -(-((w + 33) // 2) // 8) * 8
    whole = replace(e, tile=1 << 30)(img)
    tiled, plain = replace(e, tile=side)(img), replace(e, tile=side, companions=None)(img)
    assert e.tile_context() is not None
    assert psnr(tiled, whole) >= 40
    assert psnr(plain, whole) < psnr(tiled, whole) - 5


def test_int8_exports_have_no_companions(exported):
    from deepfusionnet.runtime.tile_context import companion_path

    path = exported["deepfusionnet-sr", "int8"]
    assert not companion_path(path, "tile").exists() and not companion_path(path, "context").exists()
