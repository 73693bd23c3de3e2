"""The physical floor (matmul GFLOP/s per precision), a row's fraction of it, what precision a row really
ran ("ran as"), and auto's bounded first decision. Stand-in numbers throughout; nothing is timed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import STAND_IN_FLOOR
from deepfusionnet.runtime.measure import auto, bench, floor, ran_as, report
from helpers import tiny_onnx

onnx = pytest.importorskip("onnx")
HAS_OV = importlib.util.find_spec("openvino") is not None


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFN_CACHE", str(tmp_path / "cache"))


def qdq_onnx(path: Path) -> Path:
    """Input -> Q/DQ -> Conv(DQ int8 weights) [an INT8 conv] -> Conv (float) -> Sigmoid, 3 channels."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.float32(1 / 255), "s"), numpy_helper.from_array(np.uint8(0), "zp"),
             numpy_helper.from_array(rng.integers(-100, 100, (3, 3, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.002), "ws"), numpy_helper.from_array(np.int8(0), "wzp"),
             numpy_helper.from_array((rng.standard_normal((3, 3, 1, 1)) * 0.3).astype(np.float32), "w2")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"]),
             helper.make_node("Conv", ["dq", "w"], ["c1"], pads=[1, 1, 1, 1], name="qconv"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name="fconv"),
             helper.make_node("Sigmoid", ["c2"], ["output"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, "h", "w"]) for n in ("input", "output")]
    graph = helper.make_graph(nodes, "qdq", io[:1], io[1:], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, path)
    return path


# -- the floor --------------------------------------------------------------------------------------

def test_fraction_of_floor_weights_each_precision_by_its_own_floor():
    one = floor.fraction_of_floor({"fp32": 50 * 10**9}, 1.0, STAND_IN_FLOOR)
    assert one["gflops"] == pytest.approx(100.0) and one["floor_fraction"] == pytest.approx(1.0)
    # INT8 convs + BF16 rest in 0.5 s: at the floors 80/800 + 20/400 = 0.15 s, so 30 % of the floor.
    mixed = floor.fraction_of_floor({"int8": 40 * 10**9, "bf16": 10 * 10**9}, 0.5, STAND_IN_FLOOR)
    assert mixed["gflops"] == pytest.approx(200.0) and mixed["floor_fraction"] == pytest.approx(0.3)
    no_fp16 = floor.fraction_of_floor({"fp16": 10**9}, 0.1, STAND_IN_FLOOR)
    assert no_fp16["floor_fraction"] is None and "fp16" in no_fp16["floor_note"]
    assert no_fp16["gflops"] == pytest.approx(20.0)
    assert floor.fraction_of_floor({}, 1.0, STAND_IN_FLOOR)["floor_fraction"] is None
    assert floor.floor_gflops(None, "fp32") is None and floor.floor_gflops(STAND_IN_FLOOR, "int8") == 800.0


def test_a_precision_without_its_library_or_hardware_says_not_available(monkeypatch):
    monkeypatch.setattr(floor, "isa_features", lambda: ["avx2", "fma"])
    bf16 = floor.measure_precision("bf16", (64,), 1)
    assert bf16["gflops"] is None and bf16["status"] == "not available (no bf16 hardware on this CPU)"

    def missing(n, r):
        raise floor._Unavailable("openvino not installed")

    monkeypatch.setattr(floor, "_libraries", lambda p: [("openvino", missing)])
    int8 = floor.measure_precision("int8", (64,), 1)
    assert int8["status"] == "not available (openvino not installed)"
    line = floor.floor_markdown({"fp32": STAND_IN_FLOOR["fp32"], "bf16": bf16, "int8": int8,
                                 "meta": {"threads": 2}})
    assert line.startswith("Floor (matmul on 2 cores): fp32 100 GFLOP/s (numpy, 2048^3)")
    assert "bf16 not available (no bf16 hardware on this CPU)" in line and "int8 not available" in line


def test_the_floor_is_really_measured_on_small_matrices():
    fp32 = floor.measure_precision("fp32", (64, 128), 2)
    assert fp32["status"] == "ok" and fp32["gflops"] >= fp32["median_gflops"] > 0  # fastest repeat >= median
    assert fp32["gflops"] == max(fp32["by_library"].values()) and "numpy 128" in fp32["by_library"]
    assert f"{fp32['library']} {fp32['n']}" in fp32["by_library"]
    if HAS_OV and set(floor.isa_features()) & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        int8 = floor.measure_precision("int8", (128,), 1)  # the runtime graph must say u8/i8, or it says why
        assert int8["status"] == "ok", int8["status"]


def test_the_onnxruntime_floor_graphs_are_the_matmuls_they_claim():
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    a8, w8 = rng.integers(0, 256, (16, 16), dtype=np.uint8), rng.integers(-127, 128, (16, 16), dtype=np.int8)
    af, wf = rng.standard_normal((16, 16), np.float32), rng.standard_normal((16, 16), np.float32)
    for proto, a, expect in ((floor._onnx_matmul("MatMulInteger", 16, 2, w8, 6), a8,
                              a8.astype(np.int32) @ w8.astype(np.int32)),
                             (floor._onnx_matmul("MatMul", 16, 1, wf, 1), af, af @ wf)):
        (y,) = ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"a": a})
        assert y.dtype == expect.dtype and np.allclose(y, expect, rtol=1e-4, atol=1e-4)
    int8 = floor.measure_precision("int8", (64,), 1)  # ONNX Runtime alone gives an INT8 floor
    assert int8["status"] == "ok" and "onnxruntime 64" in int8["by_library"]


def test_the_floor_is_cached_per_machine(monkeypatch):
    calls = []
    monkeypatch.setattr(floor, "measure_floor", lambda *a, **k: (calls.append(1), STAND_IN_FLOOR)[1])
    assert floor.machine_floor()["cached"] is False and floor.machine_floor()["cached"] is True
    assert len(calls) == 1
    assert floor.machine_floor(refresh=True)["cached"] is False and len(calls) == 2
    # A busier moment measures lower: the cached, higher figure stays the floor (a ceiling).
    busy = {**STAND_IN_FLOOR, "bf16": {**STAND_IN_FLOOR["bf16"], "gflops": 300.0},
            "int8": {**STAND_IN_FLOOR["int8"], "gflops": 900.0}}
    monkeypatch.setattr(floor, "measure_floor", lambda *a, **k: (calls.append(1), busy)[1])
    merged = floor.machine_floor(refresh=True)
    assert merged["bf16"]["gflops"] == 400.0 and merged["bf16"]["earlier"] is True
    assert merged["int8"]["gflops"] == 900.0 and "earlier" not in merged["int8"]
    assert floor.machine_floor()["bf16"]["gflops"] == 400.0 and len(calls) == 3
    monkeypatch.setattr(floor, "machine_key", lambda: {"cpu": "another CPU"})
    assert floor.machine_floor()["cached"] is False and len(calls) == 4
    assert "/" not in json.dumps(floor.machine_floor()).replace("GFLOP/s", "")  # no machine paths


# -- ran as -----------------------------------------------------------------------------------------

def test_qdq_convs_are_counted_as_int8_with_their_macs(tmp_path):
    path = qdq_onnx(tmp_path / "q.onnx")
    table, _ = ran_as.conv_table(str(path), 16, 24)
    assert [(n, q) for n, _, q in table] == [("qconv", True), ("fconv", False)]
    assert [m for _, m, _ in table] == [16 * 24 * 3 * 27, 16 * 24 * 3 * 3]

    class Ort:  # what ran_as asks of an ONNX Runtime backend on the CPU
        name, providers, inputs = "onnxruntime", ["CPUExecutionProvider"], []

    st = ran_as.stage_ran_as(Ort(), path, (24, 16))
    assert (st["float"], st["int8_convs"], st["convs"]) == ("fp32", 1, 2)
    assert st["macs"] == {"int8": 16 * 24 * 81, "fp32": 16 * 24 * 9}
    assert ran_as.ran_as_label([st]) == "int8 convs 1/2 + fp32 rest"
    torch_like = type("T", (), {"name": "torch"})()
    assert ran_as.stage_ran_as(torch_like, path, (24, 16))["macs"] == {"fp32": 16 * 24 * 90}


def test_labels_and_row_macs():
    a = {"float": "bf16", "int8_convs": 0, "convs": 62, "macs": {"bf16": 10}}
    b = {"float": "bf16", "int8_convs": 8, "convs": 62, "macs": {"int8": 3, "bf16": 7}}
    assert ran_as.ran_as_label([a]) == "bf16" and ran_as.ran_as_label([a, a]) == "bf16"
    assert ran_as.ran_as_label([b, a]) == "int8 convs 8/62 + bf16 rest | bf16"
    assert ran_as.ran_as_label([{"float": "fp32", "int8_convs": 5, "convs": 5}]) == "int8"
    assert ran_as.row_macs([a, b]) == {"bf16": 17, "int8": 3}
    assert ran_as.row_macs([a, {"macs": None}]) is None


@pytest.mark.skipif(not HAS_OV, reason="openvino not installed")
def test_openvino_reports_the_precision_its_compiled_model_runs(tmp_path):
    from deepfusionnet.runtime.backends.openvino import OpenVinoBackend

    path = tiny_onnx(tmp_path / "t.onnx")
    hints = [("f32", "fp32")]
    if set(floor.isa_features()) & set(floor.BF16_ISA):
        hints.append(("bf16", "bf16"))
    for hint, expect in hints:
        be = OpenVinoBackend(path, precision=hint, threads=1)
        be.infer({"input": np.zeros((1, 3, 32, 32), np.float32)})
        resolved, counts = ran_as.openvino_conv_precisions(be)
        assert resolved == expect and sum(counts.values()) == 1, (hint, resolved, counts)
        st = ran_as.stage_ran_as(be, path, (32, 32))
        assert st["source"] == "openvino runtime graph" and st["macs"] == {st["float"]: 32 * 32 * 81}
        be.close()


def test_bench_rows_carry_ran_as_gflops_and_fraction_of_floor(tmp_path, capsys):
    tiny = tiny_onnx(tmp_path / "deepfusionnet.onnx")
    res = bench.bench([str(tiny)], ["onnxruntime"], ["fp32"], [(64, 48)], runs=2, threads=1)
    (row,) = res["rows"]
    assert res["floor"]["fp32"]["gflops"] == 100.0 and row["ran_as"] == "fp32"
    macs = 64 * 48 * 81
    assert row["detail"]["macs_by_precision"] == {"fp32": macs}
    seconds = row["infer_p50_ms"] / 1000
    assert row["gflops"] == pytest.approx(2 * macs / seconds / 1e9, rel=1e-2)
    assert row["floor_fraction"] == pytest.approx(2 * macs / 100e9 / seconds, rel=1e-2)
    table = report.markdown_table(res)
    assert "| ran as |" in table and "| % floor |" in table and "| fp32 |" in table
    off = bench.bench([str(tiny)], ["onnxruntime"], ["fp32"], [(64, 48)], runs=1, threads=1, floor="off")
    assert off["floor"] is None and off["rows"][0]["floor_fraction"] is None


# -- auto's bounded first decision --------------------------------------------------------------------

def test_decision_frame_is_bounded_by_size_class():
    assert auto.decision_side(4) == 360 and auto.decision_side(1) == 720 and auto.decision_side(6) == 288
    for n in (1, 4, 6):  # the candidates' frames together stay within the budget
        assert n * auto.decision_side(n) ** 2 <= auto.DECISION_PIXELS
    assert auto.decision_size((320, 240), 4) == (320, 240)  # small frames: decided as they are
    assert auto.decision_size((600, 400), 1) == (600, 400)
    assert auto.decision_size((600, 400), 4) == (360, 360)
    assert auto.decision_size((1920, 1080), 4) == (360, 360) == auto.decision_size((3840, 2160), 4)
    assert auto.decision_size((3000, 200), 4) == (360, 200)  # a strip keeps its short side


def test_large_frames_share_one_decision_measured_on_the_bounded_frame(tmp_path, monkeypatch):
    model = str(tiny_onnx(tmp_path / "deepfusionnet.onnx"))
    bound = auto.decision_size((1920, 1080), len(auto.candidates(Path(model))))
    assert bound[0] * bound[1] < 1920 * 1080
    sizes = []
    real = auto.measure
    monkeypatch.setattr(auto, "measure",
                        lambda c, size, *a, **k: (sizes.append(size), real(c, size, *a, **k))[1])
    first = auto.choose_with_options(model, (1920, 1080))
    assert sizes == [bound] and not first.cached
    assert first.size == (1920, 1080) and first.decided_on == bound
    again = auto.choose_with_options(model, (1280, 720))  # the same size class: reused
    assert again.cached and len(sizes) == 1 and again.label == first.label
    auto.choose_with_options(model, (64, 48))  # another class, measured at its own size
    assert sizes[-1] == (64, 48)
    records = json.loads(auto.cache_path().read_text()).values()
    assert sorted(tuple(r["decided_on"]) for r in records) == sorted([bound, (64, 48)])


def test_first_decision_script_reports_both_runs_without_paths(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import auto_first_decision

    model = tiny_onnx(tmp_path / "deepfusionnet.onnx")
    res = auto_first_decision.measure(str(model), (96, 64))
    assert res["size"] == "96x64" and res["decided_on"] == [96, 64]  # small: decided whole
    for run in ("first", "second"):
        assert res[run]["peak_rss_mib"] > 0 and res[run]["seconds"] > 0
    assert res["picked"] in res["candidates"] and res["peak_ratio"] > 0
    assert str(tmp_path) not in json.dumps(res)
