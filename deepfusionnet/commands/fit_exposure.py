"""Fit an enhancer's exposure calibration on its training frames and write weights that carry it.

The network runs on each whole training frame (the pairs `dfn train` trained on: the same
--val-count/--seed/--val-group split, so the held-out pairs stay unseen), and a global gain that depends on the
output's mean brightness is fitted by least squares (deepfusionnet/runtime/exposure.py). The held-out
pairs are then scored without and with it: keep the calibrated file only if they improve, and check
on data from the cameras it will serve (on LOL it helped the held-out training scenes, +0.21 dB, and
hurt eval15, -0.67 dB; docs/training.md). The output file is the input weights plus the calibration
in their metadata; every later `dfn export`/`dfn build` carries it, and every backend applies it.

examples:
  dfn fit-exposure runs/enh/best.safetensors --data lol-v1/train --val-count 40 \\
      -o runs/enh/best.calibrated.safetensors
"""

from __future__ import annotations

import argparse

from deepfusionnet.commands.train import add_val_group_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="enhancer weights (.safetensors) or a shipped model name")
    p.add_argument("--data", required=True,
                   help="the pairs it trained on: low/ + high/, LOL-v1 or LOL-v2 layout")
    p.add_argument("--val-count", type=int, default=12,
                   help="pairs held out in training (as dfn train; default 12)")
    p.add_argument("--seed", type=int, default=0, help="the training run's split seed: its --val-seed, else its --seed (default 0)")
    add_val_group_argument(p)
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import sys
    from dataclasses import asdict
    from pathlib import Path

    from deepfusionnet.output import emit_json
    from deepfusionnet.errors import DFNError, require

    require("torch", "train")
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.train import data as D
    from deepfusionnet.train.exposure import fit_exposure, score
    from deepfusionnet.train.weights import read_metadata, save_weights

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise DFNError(f"{out}: the output must end in .safetensors")
    source = resolve(args.weights, "weights")
    if out.exists() and out.resolve() == source.path.resolve():
        raise DFNError(f"{out}: is the input weights file; write the calibrated weights to a new file")
    if source.model != "deepfusionnet":
        raise DFNError(f"{source.path}: exposure calibration is for the enhancer, not {source.model}")
    options = {"threads": args.threads} if args.threads else {}
    enh = open_enhancer(str(source.path), "torch", gate=False, **options)  # fits the network's own output
    pairs = D.load_pairs(args.data)
    train_idx, val_idx = D.split_validation(pairs, args.val_count, args.seed, args.val_group)
    if len(train_idx) < 8:
        raise DFNError(f"{args.data}: {len(train_idx)} training pairs left after holding out {len(val_idx)}; "
                       "the exposure calibration needs at least 8")
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    say(f"fitting the exposure calibration on {len(train_idx)} training frames of {args.data}")
    try:
        n = len(train_idx)

        def progress(i: int) -> None:
            if i % 25 == 0 or i == n:
                say(f"  {i}/{n} frames")

        exposure = fit_exposure(enh.run_network, ((pairs.low[i], pairs.high[i]) for i in train_idx), progress)
        held_out = score(enh.run_network, ((pairs.low[i], pairs.high[i]) for i in val_idx), exposure)
        model, name = enh.backend.model, enh.backend.model_name  # the torch backend's own module
    finally:
        enh.close()
    meta = {k: v for k, v in read_metadata(source.path).items() if k != "model"} \
        if source.path.suffix == ".safetensors" else {}
    save_weights(model, name, out, {**meta, "exposure": exposure.to_json(),
                                    "exposure_fit": f"{len(train_idx)} frames of {args.data}, "
                                                    f"val-count {args.val_count}, seed {args.seed}, "
                                                    f"val-group {args.val_group}"})
    result = {"output": str(out), "exposure": asdict(exposure), "training_frames": len(train_idx),
              "held_out": held_out}
    if args.json:
        emit_json(result)
    else:
        print(f"exposure: slope {exposure.slope:+.4f}, centre {exposure.centre:.4f}, "
              f"offset {exposure.offset:+.4f}")
        if held_out:
            h = held_out
            print(f"held-out {h['images']} pairs: PSNR {h['psnr']:.3f} -> {h['psnr_calibrated']:.3f} dB, "
                  f"SSIM {h['ssim']:.4f} -> {h['ssim_calibrated']:.4f}")
            if h["psnr_calibrated"] <= h["psnr"]:
                print("the calibration does not help on the held-out pairs: keep the uncalibrated weights")
        print(f"wrote {out}")
    return 0

