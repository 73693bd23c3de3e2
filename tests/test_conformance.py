"""`dfn check`: each TensorRT conformance rule catches the graph that breaks it, names the node, and a
clean Q/DQ graph passes; the CLI prints one line per violation and exits 1 on errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from deepfusionnet.export.conformance import check_graph, errors  # noqa: E402

F = TensorProto.FLOAT


def _model(
    nodes, inits, opset=17, in_shape=(1, 3, 8, 8), out_shape=(1, 4, 8, 8), out_type=F, extra_inputs=()
):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, list(in_shape)), *extra_inputs],
        [helper.make_tensor_value_info("y", out_type, list(out_shape))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _qdq_conv(bias_int32=False, zero_point=0, weight_axis=0, act_scale_shape=(), q_zero_point=True):
    """x -> Q -> DQ -> Conv(W: DQ(int8), B) -> y, the shape TensorRT fuses into an INT8 convolution."""
    w = np.random.default_rng(0).integers(-127, 127, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.full(act_scale_shape, 0.02, np.float32), "xs"),
        numpy_helper.from_array(np.full(act_scale_shape, zero_point, np.int8), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full((4,) if weight_axis == 0 else (3,), 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros((4,) if weight_axis == 0 else (3,), np.int8), "wz"),
    ]
    nodes = [
        helper.make_node(
            "QuantizeLinear", ["x", "xs", "xz"] if q_zero_point else ["x", "xs"], ["xq"], name="q_x"
        ),
        helper.make_node(
            "DequantizeLinear", ["xq", "xs", "xz"] if q_zero_point else ["xq", "xs"], ["xd"], name="dq_x"
        ),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dq_w", axis=weight_axis),
    ]
    if bias_int32:
        inits += [
            numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_q"),
            numpy_helper.from_array(np.full(4, 2e-4, np.float32), "b_s"),
            numpy_helper.from_array(np.zeros(4, np.int32), "b_z"),
        ]
        nodes.append(
            helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="dq_bias", axis=0)
        )
    else:
        inits.append(numpy_helper.from_array(np.zeros(4, np.float32), "b"))
    nodes.append(helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv", pads=[1] * 4))
    return _model(nodes, inits)


def _rules(found, severity="error"):
    return {(v.rule, v.node) for v in found if v.severity == severity}


def test_clean_qdq_conv_passes_both_targets():
    for target in ("trt10", "trt11"):
        assert check_graph(_qdq_conv(), target) == []


def test_int32_bias_behind_dequantize_is_refused():
    found = check_graph(_qdq_conv(bias_int32=True), "trt10")
    assert ("qdq-type", "dq_bias") in _rules(found)
    (v,) = [v for v in found if v.node == "dq_bias"]
    assert "INT32" in v.message and v.line().startswith("error: dq_bias: ")


def test_nonzero_zero_point_is_refused():
    assert {("qdq-zero-point", "q_x"), ("qdq-zero-point", "dq_x")} <= _rules(
        check_graph(_qdq_conv(zero_point=3))
    )


def test_quantize_without_zero_point_writes_uint8_and_is_refused():
    # ONNX's default output type without a zero point is UINT8: TensorRT takes INT8 only
    assert ("qdq-type", "q_x") in _rules(check_graph(_qdq_conv(q_zero_point=False)))


def test_per_channel_activation_scale_is_refused():
    bad = _qdq_conv()
    for init in bad.graph.initializer:  # a per-channel scale on the activation x
        if init.name in ("xs", "xz"):
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full(3, arr.item(), arr.dtype), init.name))
    for n in bad.graph.node:
        if n.name in ("q_x", "dq_x"):
            n.attribute.append(helper.make_attribute("axis", 1))
    assert ("qdq-axis", "q_x") in _rules(check_graph(bad))


def test_weight_scales_on_the_wrong_axis_are_refused():
    found = check_graph(_qdq_conv(weight_axis=1))
    assert ("qdq-axis", "dq_w") in _rules(found)


def test_non_constant_scale_is_refused():
    bad = _qdq_conv()
    bad.graph.input.append(helper.make_tensor_value_info("dyn_scale", F, []))
    for n in bad.graph.node:
        if n.name == "q_x":
            n.input[1] = "dyn_scale"
    assert ("qdq-scale", "q_x") in _rules(check_graph(bad))


def test_unsupported_and_foreign_ops_are_refused():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Gelu", ["r"], ["g"], name="ms_gelu", domain="com.microsoft"),
        helper.make_node("Identity", ["g"], ["y"], name="id"),
    ]
    model = _model(nodes, [], out_shape=(1, 3, 8, 8))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert ("op", "ms_gelu") in _rules(check_graph(model))
    unique = _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [], out_shape=(None,))
    assert ("op", "uniq") in _rules(check_graph(unique))


def test_opset_range_differs_between_targets():
    relu = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [], opset=21, out_shape=(1, 3, 8, 8))
    assert ("opset", "graph") in _rules(check_graph(relu, "trt10"))  # TensorRT 10 parses opset 9-20
    assert errors(check_graph(relu, "trt11")) == []  # 11 goes to 25


def test_mixed_float_types_need_a_cast():
    half = helper.make_tensor_value_info("h", TensorProto.FLOAT16, [1, 3, 8, 8])
    nodes = [helper.make_node("Add", ["x", "h"], ["y"], name="mixed_add")]
    found = check_graph(_model(nodes, [], out_shape=(1, 3, 8, 8), extra_inputs=[half]))
    assert ("strong-types", "mixed_add") in _rules(found)


def test_resize_and_pool_restrictions():
    nodes = [
        helper.make_node("Resize", ["x", "", "sc"], ["r"], name="cubic", mode="cubic"),
        helper.make_node(
            "MaxPool", ["r"], ["y"], name="dilated", kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2]
        ),
    ]
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")]
    found = check_graph(_model(nodes, inits, out_shape=(1, 3, 7, 7)))
    assert {("resize", "cubic"), ("pool", "dilated")} <= _rules(found)


def test_reduce_axes_must_be_constant():
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [2])
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rmean", keepdims=1)]
    found = check_graph(_model(nodes, [], opset=18, out_shape=(1, 3, 1, 1), extra_inputs=[axes]))
    assert ("axes", "rmean") in _rules(found)


def test_dynamic_channels_and_dla_shapes():
    def relu(shape):
        node = helper.make_node("Relu", ["x"], ["y"], name="relu")
        return _model([node], [], in_shape=shape, out_shape=shape)

    assert ("io-shape", "x") in _rules(check_graph(relu((1, "c", 8, 8))))
    dynamic = relu((1, 3, "h", "w"))
    assert errors(check_graph(dynamic)) == []  # dynamic H/W is fine for the GPU
    assert ("dla", "x") in _rules(check_graph(dynamic, dla=True))  # DLA needs min = opt = max
    assert ("dla", "x") in _rules(check_graph(relu((1, 3, 8, 9000)), dla=True))  # over DLA's 8192
    assert errors(check_graph(relu((1, 3, 480, 640)), dla=True)) == []


def test_onnx_checker_errors_are_reported_not_raised():
    broken = _model([helper.make_node("Conv", ["x", "missing_w"], ["y"], name="conv")], [])
    rules = {v.rule for v in check_graph(broken)}
    assert rules & {"onnx-checker", "shape-inference"}


def test_cli_check_lists_violations_and_exits_1(tmp_path, capsys):
    from deepfusionnet.cli import main

    bad, good = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(_qdq_conv(bias_int32=True), bad)
    onnx.save(_qdq_conv(), good)
    assert main(["check", str(bad), "--no-lint"]) == 1
    err = capsys.readouterr().err
    assert "trt10: error: dq_bias: DequantizeLinear reads INT32" in err and "trt11: FAIL" in err
    assert err.strip().splitlines()[-1].startswith("dfn check: error:")
    assert main(["check", str(good), "--target", "trt10", "--no-lint", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["targets"] == {"trt10": []} and "trt10: PASS" in out.err
    assert main(["check", str(tmp_path / "none.onnx")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("model", ["deepfusionnet", "deepfusionnet-sr"])
def test_shipped_graphs_pass_both_targets(model):
    from deepfusionnet.runtime.artifacts import resolve

    proto = onnx.load(str(resolve(model).path))
    for target in ("trt10", "trt11"):
        assert errors(check_graph(proto, target)) == [], (model, target)


def test_shape_plumbing_is_not_a_type_violation():
    """ConstantOfShape reads an INT64 shape (the exporter emits it for reflect pads without onnxslim)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["z"], name="zeros",
                              value=helper.make_tensor("v", F, [1], [0.0])),
             helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    assert errors(check_graph(_model(nodes, [], out_shape=(1, 3, 8, 8)))) == []
