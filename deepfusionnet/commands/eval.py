"""Score a model, an exported artifact or a classical baseline on paired low/normal-light data.

Standard LOL protocol by default: full resolution, RGB PSNR (data range 1, on the uint8 output) and
SSIM (11x11 Gaussian, sigma 1.5, per channel), no GT-mean correction; the GT-mean oracle is reported
separately, labelled. SR models (scale 2) are scored on the data's normal-light images, blurred and
downscaled x2 with a fixed seed.

examples:
  dfn eval deepfusionnet --data lol-v1/eval15
  dfn eval model.fp16.engine --data lol/eval15 --json > scores.json
  dfn eval baseline:lime --data lol/eval15 --sheet lime.png
  dfn eval deepfusionnet-sr --data lol/eval15 --backend torch
"""

from __future__ import annotations

import argparse

from deepfusionnet.commands.device_option import add_device_argument, torch_device_options
from deepfusionnet.commands.enhance import add_tta_argument

BACKEND_CHOICES = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="shipped model name, .safetensors/.onnx/.xml/.engine file, or baseline:NAME "
                                 "(none, gamma, clahe, he, msrcr, lime; bicubic, lanczos for SR)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="pairs: low/ + high/ (or LOL-v1 eval15/our485, LOL-v2 Test/Low + Normal)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="inference backend (default: auto, as dfn enhance picks it; "
                        "the output names what ran)")
    add_device_argument(p)
    p.add_argument("--protocol", choices=("lol", "paper"), default="lol",
                   help="lol: full resolution (standard); paper: resize to 256x256 as the seed paper did")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="score only the first N pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the SR degradation (default 0)")
    p.add_argument("--tile", type=int, default=1024, help="tile size for large frames (default 1024)")
    add_tta_argument(p)
    p.add_argument("--sheet", metavar="FILE.png", help="write a before / after / ground-truth contact sheet")
    p.add_argument("--sheet-width", type=int, default=240, metavar="PX", help="thumbnail width in the sheet")


def _choose(model: str, backend: str) -> tuple[str, str, dict]:
    """``(backend, model, options)`` for ``--backend``: ``auto`` is exactly what ``dfn enhance`` picks
    (runtime/auto.py: the fastest gated backend and precision; the JSON names the artifact and
    precision actually scored). A shipped name whose ONNX is not there yet falls back to torch."""
    import importlib.util
    import sys

    from deepfusionnet.runtime.artifacts import SHIPPED, shipped_path

    if backend != "auto":
        return backend, model, {}
    if "torch" in sys.modules:  # None there means blocked
        has_torch = sys.modules["torch"] is not None
    else:
        has_torch = importlib.util.find_spec("torch") is not None
    if model in SHIPPED and has_torch and not shipped_path(model, "onnx").is_file() \
            and shipped_path(model, "weights").is_file():
        return "torch", model, {}
    try:
        from deepfusionnet.commands.enhance import choose_backend
    except ImportError:  # a build without dfn enhance's chooser: the artifact's own backend
        return "default", model, {}
    return choose_backend(model, "auto")


def open_model(model: str, backend: str = "auto", tile: int = 1024, tta: int = 1, device: str | None = None):
    """``(callable model, description dict)`` for a baseline or any artifact on ``backend`` (the torch
    backend on ``device``)."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.baselines import get_baseline, is_baseline

    if is_baseline(model):
        if tta != 1:
            raise DFNError(f"{model}: --tta averages a network's passes; a baseline has none to average")
        if device is not None:
            raise DFNError(f"{model}: a classical baseline runs in numpy on the CPU; "
                           "--device places the torch backend")
        b = get_baseline(model)
        return b, {"model": b.name, "artifact": None, "backend": "numpy", "precision": "fp32",
                   "description": b.description, "tta": 1}
    from dataclasses import asdict

    from deepfusionnet.runtime.enhancer import open_enhancer

    name, target, options = _choose(model, backend)
    options = {**options, **torch_device_options(device, name)}
    enh = open_enhancer(target, name, tile=tile, tta=tta, **options)
    a = enh.artifact
    return enh, {"model": a.model, "artifact": str(a.path), "backend": enh.backend.name,
                 "precision": a.precision, "backend_options": options, "tta": tta,
                 "exposure": asdict(a.exposure) if a.exposure is not None else None}


def run(args: argparse.Namespace) -> int:
    import sys

    from deepfusionnet.cli import emit_json
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.evaluate import evaluate
    from deepfusionnet.runtime.images import is_image_path
    from deepfusionnet.runtime.pairs import find_pairs

    pairs = find_pairs(args.data)
    if args.limit < 0:
        raise DFNError(f"--limit must be positive, got {args.limit}")
    if args.limit:
        pairs = pairs[: args.limit]
    if args.sheet and not is_image_path(args.sheet):
        raise DFNError(f"{args.sheet}: the contact sheet needs an image suffix (.png)")
    model, desc = open_model(args.model, args.backend, args.tile, args.tta, args.device)
    sheet = None
    if args.sheet:
        from deepfusionnet.runtime.sheet import ContactSheet

        sheet = ContactSheet(args.sheet_width, title=args.model)

    def on_image(s, x, out, target) -> None:
        if not args.json:
            print(f"  {s.name:<24} {s.psnr:7.2f} dB  SSIM {s.ssim:.4f}", file=sys.stderr)
        if sheet is not None:
            sheet.add(s.name, x, out, target, f"{s.psnr:.2f} dB / {s.ssim:.3f}")

    if not args.json:
        tta = f", self-ensemble x{args.tta}" if args.tta > 1 else ""
        print(f"dfn eval: {desc['model']} ({desc['precision']}{tta}) on {desc['backend']}, {len(pairs)} pairs "
              f"from {args.data} (protocol {args.protocol})", file=sys.stderr)
    try:
        result = evaluate(model, pairs, args.protocol, args.seed, on_image)
    finally:
        model.close()
    for f in result.failed:
        print(f"dfn eval: skipped {f['name']}: {f['error']}", file=sys.stderr)
    if not result.per_image:
        raise DFNError(f"{args.data}: no pair could be scored ({len(result.failed)} failed)")
    if sheet is not None:
        sheet.write(args.sheet)
    out = {**desc, "data": str(args.data), **result.to_json()}
    if args.json:
        emit_json(out)
    else:
        print(f"{desc['model']}{tta}: PSNR {out['psnr']:.2f} dB, SSIM {out['ssim']:.4f} over {out['images']} "
              f"images ({out['task']}, protocol {args.protocol}, no GT-mean)", file=sys.stderr)
        if out["gt_mean"]:
            print(f"  GT-mean oracle (not comparable): PSNR {out['gt_mean']['psnr']:.2f} dB, "
                  f"SSIM {out['gt_mean']['ssim']:.4f}", file=sys.stderr)
        if sheet is not None:
            print(f"  contact sheet: {args.sheet}", file=sys.stderr)
    return 2 if result.failed else 0
