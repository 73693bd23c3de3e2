"""Parameters, multiply-adds, input multiple, scale, IO names/shapes and sha256 of a model or artifact.

MODEL is a shipped name (deepfusionnet, deepfusionnet-sr), a weights file, an ONNX graph or a
TensorRT engine. Shipped names are measured with PyTorch when it is installed, else from the shipped
ONNX. MACs count convolutions only: output elements x (Cin / groups) x kH x kW, at --size (the
input size; an SR model's output is twice that).

examples:
  dfn info deepfusionnet
  dfn info deepfusionnet-sr --size 256x256 --json
  dfn info runs/exp/model.fp16.onnx
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="shipped model name, .safetensors/.pt, .onnx, .xml or .engine file")
    p.add_argument("--size", default="600x400", metavar="WxH", help="input size for MACs (default 600x400)")
    p.add_argument("--via", choices=("auto", "torch", "onnx"), default="auto",
                   help="for a shipped name: measure the PyTorch model or the shipped ONNX "
                        "(default: torch if installed)")


def torch_stats(module, height: int, width: int) -> tuple[int, int, tuple[int, ...]]:
    """``(parameters, conv MACs, output shape)`` of a torch module for a ``(1, 3, H, W)`` input, by
    forward hooks on every Conv2d: output elements x (Cin / groups) x kH x kW.

    The forward runs on a copy on the ``meta`` device (shapes only, no arithmetic), so it is
    near-instant at any size and ``module`` is left untouched.
    """
    import copy

    import torch

    total = [0]

    def hook(mod, inp, out) -> None:
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, torch.nn.ConvTranspose2d):  # each input element meets k x Cout / groups weights
            total[0] += inp[0].numel() * (mod.out_channels // mod.groups) * k
        else:
            total[0] += out.numel() * (mod.in_channels // mod.groups) * k

    params = sum(p.numel() for p in module.parameters())
    shadow = copy.deepcopy(module).to("meta").eval()
    for m in shadow.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        y = shadow(torch.zeros(1, 3, height, width, device="meta"))
    return params, total[0], tuple(y.shape)


def _io_onnx(path) -> tuple[list[dict], list[dict]]:
    from deepfusionnet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"], threads=1, optimization="none")
    try:
        return [t.to_json() for t in be.inputs], [t.to_json() for t in be.outputs]
    finally:
        be.close()


def _available(module: str) -> bool:
    import importlib.util
    import sys

    if module in sys.modules:  # None there means "blocked" (the torch-free tests do that)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def _artifact(model: str, via: str):
    """The artifact ``dfn info`` describes, and whether PyTorch measures it."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.artifacts import SHIPPED, resolve, shipped_path

    has_torch = _available("torch")
    if model not in SHIPPED:
        art = resolve(model)
        return art, art.kind == "weights" and has_torch and via != "onnx"
    if via == "torch" and not has_torch:
        raise DFNError("--via torch: torch is not installed (pip install 'deepfusionnet[train]')")
    use_torch = via == "torch" or (via == "auto" and has_torch)
    if not use_torch and not shipped_path(model, "onnx").is_file():
        why = "" if via == "onnx" else " and torch is not installed"
        raise DFNError(f"shipped model {model!r}: no ONNX at {shipped_path(model, 'onnx')}{why}, so "
                       "nothing to measure; use --via torch (needs deepfusionnet[train]) or create it "
                       "with dfn export")
    return resolve(model, "weights" if use_torch else "onnx"), use_torch


def describe(model: str, width: int, height: int, via: str = "auto") -> dict:
    """The ``dfn info`` record for ``model`` at input size ``width`` x ``height``."""
    from dataclasses import asdict
    from pathlib import Path

    from deepfusionnet.runtime.artifacts import file_sha256
    from deepfusionnet.runtime.measure.macs import (onnx_conv_macs, onnx_params, read_onnx_summary,
                                                    safetensors_params)

    art, use_torch = _artifact(model, via)
    m = art.multiple
    ph, pw = -(-height // m) * m, -(-width // m) * m  # the runtime pads to the multiple
    rec: dict = {
        "model": art.model, "artifact": str(art.path), "kind": art.kind, "precision": art.precision,
        "scale": art.scale, "multiple": m, "size": [width, height],
        "params": None, "params_source": None, "macs": None, "gmacs": None, "macs_note": None,
        "inputs": [], "outputs": [], "sha256": file_sha256(art.path),
        "file_bytes": Path(art.path).stat().st_size,
        "exposure": None if art.exposure is None else asdict(art.exposure),
    }
    if (ph, pw) != (height, width):
        rec["padded_size"] = [pw, ph]
    if use_torch:
        from deepfusionnet.train.weights import load_model

        net, _ = load_model(art.path)
        params, macs, yshape = torch_stats(net, ph, pw)
        rec.update(params=params, params_source="torch parameters()", macs=macs,
                   macs_note="conv MACs from torch forward hooks")
        rec["inputs"] = [{"name": "input", "shape": [1, 3, "height", "width"], "dtype": "float32"}]
        oh, ow = ("height", "width") if art.scale == 1 else (f"{art.scale}*height", f"{art.scale}*width")
        rec["outputs"] = [{"name": "output", "shape": [1, 3, oh, ow], "dtype": "float32"}]
    elif art.kind == "weights":
        rec.update(params=safetensors_params(art.path) if art.path.suffix == ".safetensors" else None,
                   params_source="safetensors header (running statistics left out)",
                   macs_note="MACs need torch (pip install 'deepfusionnet[train]')")
    elif art.kind == "onnx":
        summary = read_onnx_summary(art.path)
        counted, elements = onnx_params(summary)
        declared = art.sidecar.params or summary.metadata.get("dfn.params")
        if declared:
            rec.update(params=int(declared), params_source="recorded at export (torch parameters())")
        else:
            rec.update(params=counted,
                       params_source="ONNX initializers, BatchNorm running statistics left out")
        rec["onnx_initializer_elements"] = elements
        rec["inputs"], rec["outputs"] = _io_onnx(art.path)
        rec["macs"], rec["macs_note"] = onnx_conv_macs(art.path, ph, pw)
    else:  # engine / openvino: what the sidecar recorded; no TensorRT or OpenVINO needed
        sc = art.sidecar
        if art.kind == "engine":
            from deepfusionnet.runtime.backends.tensorrt import verify_engine

            rec["engine_check"] = verify_engine(Path(art.path), sc)
        rec.update(params=sc.params, params_source="sidecar" if sc.params else None,
                   macs_note="not measured for this artifact kind; run dfn info on the source ONNX")
        rec["inputs"], rec["outputs"] = sc.inputs or [], sc.outputs or []
        if sc.empty:
            rec["note"] = f"no sidecar {art.path}.json beside the file; only the hash is known"
        else:
            rec["sidecar"] = sc.to_dict()
    if rec["macs"] is not None:
        rec["gmacs"] = round(rec["macs"] / 1e9, 3)
    if art.kind != "weights":  # weights build their companions in PyTorch when they have attention
        rec["tile_companions"] = tile_companions(art.path)
    rec["output_size"] = [width * art.scale, height * art.scale]  # padding is cropped off again
    return rec


def tile_companions(path) -> list[str] | None:
    """Names of the ``.context``/``.tile`` graphs beside ``path`` (runtime.tile_context), or None."""
    from deepfusionnet.runtime.tile_context import companion_files

    found = companion_files(path)
    return [f.name for f in found] if found else None


def _table(rec: dict) -> str:
    def io(ts: list[dict]) -> str:
        return ", ".join(f"{t['name']} {t['shape']} {t.get('dtype', '')}".strip() for t in ts) or "-"

    params = f"{rec['params']:,}" if rec["params"] is not None else "unknown"
    if rec["params_source"]:
        params += f"  ({rec['params_source']})"
    w, h = rec["size"]
    macs = f"{rec['gmacs']:.3f} G at {w}x{h}" if rec["macs"] is not None else "unknown"
    if rec.get("padded_size"):
        macs += f" (padded to {rec['padded_size'][0]}x{rec['padded_size'][1]})"
    rows = [
        ("model", f"{rec['model']} ({rec['kind']}, {rec['precision']})"),
        ("artifact", rec["artifact"]),
        ("parameters", params),
        ("MACs (conv)", macs + (f"  [{rec['macs_note']}]" if rec["macs_note"] else "")),
        ("scale", f"x{rec['scale']} (output {rec['output_size'][0]}x{rec['output_size'][1]})"),
        ("input multiple", f"{rec['multiple']} (other sizes are padded)"),
        ("inputs", io(rec["inputs"])),
        ("outputs", io(rec["outputs"])),
        ("sha256", rec["sha256"]),
        ("file size", f"{rec['file_bytes'] / 1e6:.2f} MB"),
    ]
    if rec.get("exposure"):
        e = rec["exposure"]
        rows.append(("exposure", f"calibrated: slope {e['slope']:+.4f}, centre {e['centre']:.4f}, "
                                 f"offset {e['offset']:+.4f}"))
    if "tile_companions" in rec:
        comp = rec["tile_companions"]
        rows.append(("tiling", f"tiles share the frame's context ({', '.join(comp)})" if comp
                     else "no .context/.tile companions: tiles do not share the frame's context"))
    if rec.get("engine_check"):
        rows.append(("engine check", rec["engine_check"]))
    if rec.get("note"):
        rows.append(("note", rec["note"]))
    return "\n".join(f"{k:<15} {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    import sys

    from deepfusionnet.output import emit_json
    from deepfusionnet.runtime.sizes import parse_size

    w, h = parse_size(args.size, what="--size")
    rec = describe(args.model, w, h, args.via)
    if args.json:
        emit_json(rec)
    else:
        print(_table(rec), file=sys.stderr)
    return 0
