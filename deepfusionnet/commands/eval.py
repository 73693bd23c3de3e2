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
  dfn eval int8.onnx --fast --sr-model sr-int8.onnx --data lol/eval15   # what dfn enhance --fast runs
"""

from __future__ import annotations

import argparse

from deepfusionnet.commands.device_option import add_device_argument, torch_device_options
from deepfusionnet.commands.enhance import add_gate_argument, add_tta_argument, backend_choices


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="shipped model name, .safetensors/.onnx/.xml/.engine file, or baseline:NAME "
                                 "(none, gamma, clahe, he, msrcr, lime; bicubic, lanczos for SR)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="pairs: low/ + high/ (or LOL-v1 eval15/our485, LOL-v2 Test/Low + Normal)")
    p.add_argument("--backend", choices=backend_choices(), default="auto",
                   help="inference backend (default: auto, as dfn enhance picks it; "
                        "the output names what ran)")
    add_device_argument(p)
    p.add_argument("--protocol", choices=("lol", "paper"), default="lol",
                   help="lol: full resolution (standard); paper: resize to 256x256 as the seed paper did")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="score only the first N pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the SR degradation (default 0)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="score frames larger than N pixels on a side in N x N tiles, as dfn enhance runs them "
                        "(default 2048)")
    add_tta_argument(p)
    add_gate_argument(p)
    p.add_argument("--fast", action="store_true",
                   help="score what dfn enhance --fast runs: the model at half resolution, then --sr-model "
                        "back to full size")
    p.add_argument("--sr-model", default="deepfusionnet-sr", metavar="NAME|PATH",
                   help="SR model of --fast (default: %(default)s)")
    p.add_argument("--robustness", action="store_true",
                   help="also feed the normal-light images as inputs (PSNR of output vs input, newly clipped and "
                        "hue-shifted pixels) and measure video flicker on noisy clips of the low-light images, "
                        "without and with the brightness smoother")
    p.add_argument("--sheet", metavar="FILE.png", help="write a before / after / ground-truth contact sheet")
    p.add_argument("--sheet-width", type=int, default=240, metavar="PX", help="thumbnail width in the sheet")


def _choose(model: str, backend: str) -> tuple[str, str, dict]:
    """``(backend, model, options)`` for ``--backend``: ``auto`` is exactly what ``dfn enhance`` picks
    (runtime/measure/auto.py: the fastest gated backend and precision; the JSON names the artifact and
    precision actually scored). A shipped name whose ONNX is not there yet falls back to the weights'
    backend (torch) when it can run here."""
    from deepfusionnet.commands.enhance import choose_backend
    from deepfusionnet.runtime.artifacts import SHIPPED, shipped_path
    from deepfusionnet.runtime.backends.base import default_backend, unavailable

    if backend != "auto":
        return backend, model, {}
    weights_backend = default_backend("weights")
    if model in SHIPPED and unavailable(weights_backend) is None and not shipped_path(model, "onnx").is_file() \
            and shipped_path(model, "weights").is_file():
        return weights_backend, model, {}
    return choose_backend(model, "auto")


def open_model(model: str, backend: str = "auto", tile: int | None = None, tta: int = 1,
               device: str | None = None, gate: bool = True, fast_sr: str | None = None):
    """``(callable model, description dict)`` for a baseline or any artifact on ``backend`` (the torch
    backend on ``device``); with ``fast_sr`` (an SR model) the chain ``dfn enhance --fast`` runs."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.enhancer import DEFAULT_TILE
    from deepfusionnet.runtime.measure.baselines import get_baseline, is_baseline

    tile = DEFAULT_TILE if tile is None else tile
    if is_baseline(model):
        if tta != 1:
            raise DFNError(f"{model}: --tta averages a network's passes; a baseline has none to average")
        if device is not None:
            raise DFNError(f"{model}: a classical baseline runs in numpy on the CPU; "
                           "--device places the torch backend")
        if fast_sr is not None:
            raise DFNError(f"{model}: --fast chains a network with an SR model; a baseline has no "
                           "half-size pass")
        b = get_baseline(model)
        return b, {"model": b.name, "artifact": None, "backend": "numpy", "precision": "fp32",
                   "description": b.description, "tta": 1}
    from dataclasses import asdict

    from deepfusionnet.runtime.enhancer import open_enhancer

    name, target, options = _choose(model, backend)
    options = {**options, **torch_device_options(device, name)}
    enh = open_enhancer(target, name, tile=tile, tta=tta, gate=gate, **options)
    a = enh.artifact
    desc = {"model": a.model, "artifact": str(a.path), "backend": enh.backend.name,
            "precision": a.precision, "backend_options": options, "tta": tta,
            "exposure_gate": "on" if enh.gate is not None else "off",
            "exposure": asdict(a.exposure) if a.exposure is not None else None}
    if fast_sr is None:
        return enh, desc
    chain = _fast_chain(enh, fast_sr, backend, tile, tta, device)
    sr = chain.sr
    return chain, {**desc, "mode": "fast", "sr_model": sr.artifact.model,
                   "sr_artifact": str(sr.artifact.path), "sr_backend": sr.backend.name,
                   "sr_precision": sr.artifact.precision}


def _fast_chain(enh, sr_model: str, backend: str, tile: int, tta: int, device: str | None):
    """``enh`` at half size, then ``sr_model`` back to full size: the chain ``dfn enhance --fast`` runs."""
    from deepfusionnet.commands.enhance import open_sr_stage
    from deepfusionnet.runtime.enhancer import Chain, open_enhancer

    def open_sr():
        name, target, options = _choose(sr_model, backend)
        options = {**options, **torch_device_options(device, name)}
        return open_enhancer(target, name, tile=tile, tta=tta, **options)

    return Chain(enh, open_sr_stage(enh, sr_model, open_sr), fast=True)


def robustness(model, pairs: list, clips: int = 2) -> dict:
    """``--robustness``: well-exposed inputs (the pairs' normal-light images) and flicker on clips of the
    first ``clips`` low-light images (runtime/measure/robustness.py)."""
    from deepfusionnet.runtime.measure.robustness import flicker, tiling_agreement, well_exposed

    report = {"well_exposed": well_exposed(model, [hp for _, hp in pairs])}
    if hasattr(model, "run_tensor"):  # a network (not a classical baseline): video flicker
        report["flicker"] = flicker(model.run_tensor, [lp for lp, _ in pairs[:clips]])["summary"]
    if hasattr(model, "tile") and model.scale == 1:  # one enhancement model: do tiles agree with the whole?
        report["tiling_psnr_db"] = tiling_agreement(model, pairs[0][0])
    return report


def _print_robustness(report: dict) -> None:
    import sys

    w = report["well_exposed"]
    print(f"  well-exposed inputs ({w['images']}): output vs input PSNR min {w['psnr_vs_input_min']:.2f} dB, "
          f"median {w['psnr_vs_input_median']:.2f} dB ({w['unchanged']} unchanged); newly clipped "
          f"{w['clipped_fraction']:.2%}, hue-shifted {w['hue_shifted_fraction']:.2%}", file=sys.stderr)
    for size, db in report.get("tiling_psnr_db", {}).items():
        print(f"  2 x 2 tiles vs the whole frame at {size}: {db:.2f} dB", file=sys.stderr)
    for name, f in report.get("flicker", {}).items():
        noise = (f", temporal noise {f['temporal_noise_in']:.3f} -> {f['temporal_noise_out']:.3f}"
                 if f["temporal_noise_in"] is not None else "")
        print(f"  flicker, {name} clips: brightness {f['brightness_flicker_in']:.4f} -> "
              f"{f['brightness_flicker_out']:.4f}{noise}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import sys

    from deepfusionnet.output import emit_json
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.measure.evaluate import evaluate
    from deepfusionnet.runtime.images import is_image_path
    from deepfusionnet.runtime.measure.pairs import find_pairs

    pairs = find_pairs(args.data)
    if args.limit < 0:
        raise DFNError(f"--limit must be positive, got {args.limit}")
    if args.limit:
        pairs = pairs[: args.limit]
    if args.sheet and not is_image_path(args.sheet):
        raise DFNError(f"{args.sheet}: the contact sheet needs an image suffix (.png)")
    model, desc = open_model(args.model, args.backend, args.tile, args.tta, args.device,
                             args.exposure_gate == "on", args.sr_model if args.fast else None)
    sheet = None
    if args.sheet:
        from deepfusionnet.runtime.measure.sheet import ContactSheet

        sheet = ContactSheet(args.sheet_width, title=args.model)

    def on_image(s, x, out, target) -> None:
        if not args.json:
            print(f"  {s.name:<24} {s.psnr:7.2f} dB  SSIM {s.ssim:.4f}", file=sys.stderr)
        if sheet is not None:
            sheet.add(s.name, x, out, target, f"{s.psnr:.2f} dB / {s.ssim:.3f}")

    if not args.json:
        tta = f", self-ensemble x{args.tta}" if args.tta > 1 else ""
        fast = (f" at half size, then {desc['sr_model']} ({desc['sr_precision']}) on {desc['sr_backend']}"
                if args.fast else "")
        print(f"dfn eval: {desc['model']} ({desc['precision']}{tta}) on {desc['backend']}{fast}, "
              f"{len(pairs)} pairs from {args.data} (protocol {args.protocol})", file=sys.stderr)
    try:
        result = evaluate(model, pairs, args.protocol, args.seed, on_image)
        robust = robustness(model, pairs) if args.robustness else None
    finally:
        model.close()
    for f in result.failed:
        print(f"dfn eval: skipped {f['name']}: {f['error']}", file=sys.stderr)
    if not result.per_image:
        raise DFNError(f"{args.data}: no pair could be scored ({len(result.failed)} failed)")
    if sheet is not None:
        sheet.write(args.sheet)
    out = {**desc, "data": str(args.data), **result.to_json(), **({"robustness": robust} if robust else {})}
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
        if robust:
            _print_robustness(robust)
    return 2 if result.failed else 0
