"""The ``.context`` and ``.tile`` companions of an exported graph: seam-free tiles on every backend.

For a network with channel attention (:mod:`deepfusionnet.train.models.context`), the export writes
``X.context.onnx`` (image -> the attention's logits) and ``X.tile.onnx`` (image and logits -> output)
beside ``X.onnx``, in the same precision, each through the ONNX checker and the TensorRT conformance
gate. It then measures what they are for: 2 x 2 tiles against the whole frame, both through the runtime
on ONNX Runtime, on the export's check frames. The runtime uses them whenever it tiles a frame
(:mod:`deepfusionnet.runtime.tile_context`). Quantization-aware INT8 weights get INT8 companions (every
Conv INT8, as in their graph); post-training INT8 graphs get none: their tiles run without a shared
context (calibrating two more graphs would double the export).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deepfusionnet.runtime.tile_context import CONTEXT, ROLES, companion_path

PRECISIONS = ("fp32", "fp16")  # and INT8 from quantization-aware weights
AGREEMENT_DB = 40.0  # tiled vs whole: below it the export warns (nothing a user can change but the model)


def remove_companions(out: Path) -> None:
    """Remove ``out``'s companions: a stale pair would give another graph's context to this one's tiles."""
    for role in ROLES:
        companion_path(out, role).unlink(missing_ok=True)


def companion_graphs(job, peaks_of: Callable) -> dict[str, Any] | None:
    """``{"context": proto, "tile": proto}`` for ``job``'s network in its precision, or None when it has
    no channel attention or the precision has no companions. ``peaks_of(graph, feeds)``: FP16's
    activation peaks (export.precision.activation_peaks)."""
    import torch

    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export import precision as prec
    from deepfusionnet.train.models.context import ContextGraph, TileGraph, context_width

    opts = job.opts
    width = context_width(job.net)
    if not width or (opts.precision not in PRECISIONS and not job.qat):
        return None
    sample = torch.zeros(1, width)
    graphs = {
        "context": onx.onnx_from_torch(ContextGraph(job.net), opts.opset, opts.exporter, output=CONTEXT),
        "tile": onx.onnx_from_torch(TileGraph(job.net), opts.opset, opts.exporter,
                                    extra_inputs={CONTEXT: sample}),
    }
    frames = _calibration_frames(job) if opts.precision == "fp16" else []
    for role, graph in graphs.items():
        graph = onx.simplify(graph) if opts.simplify else graph
        if job.qat:  # the fake quantizers export as Q/DQ: every Conv INT8, as in the main graph
            from deepfusionnet.export.qat import quantize_conv_weights

            graph = onx.reinfer_shapes(quantize_conv_weights(graph))
        if opts.precision == "fp16":
            graph, _ = prec.fp16_from_onnx(graph, peaks=peaks_of(graph, _feeds(job, frames, role)))
        if opts.size is not None:
            graph = onx.fix_input_size(graph, *opts.size)
        graphs[role] = graph
    return graphs


def _calibration_frames(job) -> list[np.ndarray]:
    """Two calibration frames, as the main graph's FP16 step reads them."""
    from deepfusionnet.export import precision as prec

    cw, ch = job.opts.calib_size
    paths = prec.calibration_images(job.calib_dir, 2)
    return [prec.calibration_frame(p, cw, ch, job.spec.multiple) for p in paths]


def _feeds(job, frames: list[np.ndarray], role: str) -> list[dict]:
    """FP16's activation-peak feeds: the frames (and their context, for the tile graph)."""
    import torch

    from deepfusionnet.export import onnx as onx
    from deepfusionnet.train.models.context import ContextGraph

    if role == "context":
        return [{onx.INPUT: f} for f in frames]
    context = ContextGraph(job.net)
    with torch.no_grad():
        return [{onx.INPUT: f, CONTEXT: context(torch.from_numpy(f)).numpy()} for f in frames]


def agreement(main: Path, frames: list[Path], scale: int, multiple: int) -> dict:
    """Worst and mean PSNR of 2 x 2 context tiles against the whole frame, on ONNX Runtime (CPU)."""
    from deepfusionnet.runtime.backends.base import load_backend
    from deepfusionnet.runtime.enhancer import network_fn
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.measure.robustness import two_by_two_tile
    from deepfusionnet.runtime.metrics import psnr
    from deepfusionnet.runtime.processing import to_image, to_tensor
    from deepfusionnet.runtime.tile_context import load_tile_context

    be = load_backend("onnxruntime", main)
    ctx = load_tile_context("onnxruntime", main, "onnx")
    try:
        scores = []
        for path in frames:
            x = to_tensor(read_image(path))
            side = two_by_two_tile(x.shape[-1], x.shape[-2], multiple=multiple)
            whole = network_fn(be, scale, multiple, tile=1 << 30)(x)
            tiled = network_fn(be, scale, multiple, tile=side, context=ctx)(x)
            scores.append(psnr(to_image(tiled), to_image(whole)))
    finally:
        be.close()
        ctx.close()
    return {"tiles": "2x2", "frames": len(scores), "worst_db": round(float(min(scores)), 2),
            "mean_db": round(float(np.mean(scores)), 2)}


def write_companions(job, main_graph, graphs: dict, frames: list[Path], gate: Callable) -> dict:
    """Gate, check and write ``graphs`` beside ``job.out``; returns the sidecar's ``"tiles"`` record.
    The agreement is measured on copies in a temporary folder, before anything is written in place."""
    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export.sidecar import set_metadata
    from deepfusionnet.runtime.images import atomic_write_bytes

    exposure = job.source_artifact.exposure
    for role, graph in graphs.items():
        set_metadata(graph, job.name, job.spec.scale, job.spec.multiple, job.opts.precision,
                     exposure.to_json() if exposure is not None else None, job.spec.task)
        onx.check(graph, str(companion_path(job.out, role)))
        gate(graph, job.opts.targets, companion_path(job.out, role))
    record = {"context": companion_path(job.out, "context").name,
              "tile": companion_path(job.out, "tile").name,
              "context_width": int(graphs["tile"].graph.input[1].type.tensor_type.shape.dim[1].dim_value)}
    with tempfile.TemporaryDirectory(prefix="dfn-tiles-") as tmp:
        main = Path(tmp) / job.out.name
        onx.save(main_graph, main)
        for role, graph in graphs.items():
            onx.save(graph, companion_path(main, role))
        if frames and job.opts.size is None:
            record["agreement"] = agreement(main, frames, job.spec.scale, job.spec.multiple)
            if record["agreement"]["worst_db"] < AGREEMENT_DB:
                job.progress(f"warning: 2x2 tiles agree with the whole frame at only "
                             f"{record['agreement']['worst_db']} dB (worst check frame)")
        for role in graphs:
            atomic_write_bytes(companion_path(job.out, role), companion_path(main, role).read_bytes())
    return record


def check_frames(job, limit: int = 4) -> list[Path]:
    """Up to ``limit`` of the export's check inputs as its parity check finds them (none without --check)."""
    if job.check_dir is None:
        return []
    from deepfusionnet.runtime.measure.pairs import find_items

    return [low for low, _ in find_items(job.check_dir, limit)]

