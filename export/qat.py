"""ONNX of a quantization-aware model (``dfn train --qat`` weights): every Conv INT8 in explicit Q/DQ.

The exported graph already holds each Conv's input QuantizeLinear/DequantizeLinear pair (per tensor, the
trained range, zero point 0; :class:`deepfusionnet.train.qat.QuantConv2d`). Here each Conv's float weight
becomes an INT8 initializer read through a DequantizeLinear of its own (per output channel, axis 0, scale
``max|w| / 127``, zero point 0), as TensorRT's explicit quantization and the training's fake quantization
both define it; biases stay float. A Conv without an input Q/DQ is an error: the graph would run part of
the network float while the sidecar says INT8.
"""

from __future__ import annotations

import numpy as np

from deepfusionnet.errors import DFNError, require
from deepfusionnet.export.precision import producers

QMAX = 127


def _weight_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 weight, per-output-channel scale)`` of a float conv weight, as ``train.qat`` quantizes it."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float32)
    scale = (np.maximum(amax, np.float32(1e-12)) / np.float32(QMAX)).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -QMAX - 1, QMAX).astype(np.int8)
    return q, scale


def quantize_conv_weights(proto):
    """A copy of ``proto`` with every Conv's weight an INT8 initializer behind its own DequantizeLinear.

    Raises when a Conv's input does not come through a DequantizeLinear (not a QAT graph) or its weight is
    not a float initializer.
    """
    onnx = require("onnx", "export")
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = producers(graph)
    nodes = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Conv":
            src = producer.get(node.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                raise DFNError(f"{node.name}: its input has no QuantizeLinear/DequantizeLinear; the weights "
                               "do not look quantization-aware (dfn train --qat)")
            if node.input[1] not in inits:
                raise DFNError(f"{node.name}: its weight is not a constant initializer")
            q, scale = _weight_int8(numpy_helper.to_array(inits[node.input[1]]).astype(np.float32))
            # One weight per Conv: a shared one breaks ONNX Runtime's exact INT8 mode (export/onnx.py).
            base = f"{node.name or f'conv{i}'}/weight"
            graph.initializer.extend([
                numpy_helper.from_array(q, f"{base}_int8"),
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")])
            dq_inputs = [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"]
            nodes.append(helper.make_node("DequantizeLinear", dq_inputs, [f"{base}_dq"],
                                          name=f"{base}_DequantizeLinear", axis=0))
            node.input[1] = f"{base}_dq"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # The float weights are now unread; drop them (and nothing else) from the file.
    used = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out


def qdq_summary(proto) -> dict:
    """What the sidecar records of a QAT graph: how many Convs read INT8 inputs and weights."""
    graph = proto.graph
    producer = producers(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]

    def dq(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    both = [n for n in convs if dq(n.input[0]) and dq(n.input[1])]
    return {"convs_int8": len(both), "convs_total": len(convs)}
