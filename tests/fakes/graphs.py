"""Tiny real ONNX graphs (built with onnx.helper, no torch) computing what the fake TensorRT network
computes: ``0.5 * x + 0.25``, then nearest 2x upsampling when ``scale == 2``. ONNX Runtime runs them,
so they double as the numerical reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_onnx(path: Path, scale: int = 1, precision: str = "fp32", h: int | str = "H", w: int | str = "W",
              model: str = "deepfusionnet", multiple: int = 8, exposure: str | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    npdt = np.float16 if precision == "fp16" else np.float32
    out_h = h * scale if isinstance(h, int) else f"{h}_out"
    out_w = w * scale if isinstance(w, int) else f"{w}_out"
    inits = [numpy_helper.from_array(np.array(0.5, npdt), "half"), numpy_helper.from_array(np.array(0.25, npdt), "quarter")]
    nodes = [helper.make_node("Mul", ["input", "half"], ["m"]), helper.make_node("Add", ["m", "quarter"], ["y"])]
    last = "y"
    if scale > 1:
        inits.append(numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", ["y", "", "scales"], ["output"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        last = "output"
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["output"]))
        last = "output"
    graph = helper.make_graph(nodes, "fake", [helper.make_tensor_value_info("input", elem, [1, 3, h, w])],
                              [helper.make_tensor_value_info(last, elem, [1, 3, out_h, out_w])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in {"dfn.model": model, "dfn.scale": scale, "dfn.multiple": multiple, "dfn.precision": precision}.items():
        m.metadata_props.add(key=k, value=str(v))
    if exposure:
        m.metadata_props.add(key="dfn.exposure", value=exposure)
    onnx.save(m, str(path))
    return path
