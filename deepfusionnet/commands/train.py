"""Train DeepFusionNet (enhancement) or DeepFusionNet-SR on paired data.

Resumable: checkpoints are written atomically every few minutes and at each epoch end; run the same
command with --resume to continue exactly where it stopped, also on another device or number of
processes. Runs on a GPU when one is visible (--device). Under torchrun it trains with
DistributedDataParallel (NCCL between GPUs, gloo between CPUs); --batch-size is the global batch.

examples:
  dfn train --data lol/train --out runs/enh --epochs 120 --batch-size 8 --crop 128
  torchrun --nproc_per_node 4 -m deepfusionnet.cli train --data lol/train --out runs/enh --batch-size 32
  dfn train --qat --data lol/train --out runs/qat --epochs 1 --lr 3e-5 --crop 0 --batch-size 1 --freeze-bn
"""

from __future__ import annotations

import argparse


def add_val_group_argument(p: argparse.ArgumentParser) -> None:
    """--val-group, shared with fit-exposure; the choices are train.data.VAL_GROUPS (not imported here:
    that module pulls in OpenCV at --help time)."""
    p.add_argument("--val-group", choices=["scene", "image"], default="scene",
                   help="how validation pairs are held out: whole scenes (look-alike normal-light images "
                        "together; default) or only pairs sharing one normal-light image")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of pairs: low/ + high/, LOL-v1 or LOL-v2 layout")
    p.add_argument("--model", default="deepfusionnet",
                   help="deepfusionnet, deepfusionnet-sr, or deepfusionnet-sr-paper (the paper's SR block, "
                        "without the skip)")
    p.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8,
                   help="global batch: under torchrun each process takes batch/processes samples per step")
    p.add_argument("--crop", type=int, default=128,
                   help="training crop (SR: the low-resolution side); 0: whole frames, so global pooling and "
                        "BatchNorm see what inference sees (enhancer)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "step"], default="constant",
                   help="constant, cosine (to 1e-6), or step: x --lr-gamma every "
                        "--lr-step-epochs epochs (the SID U-Net's StepLR)")
    p.add_argument("--lr-step-epochs", type=int, default=10, help="with --lr-schedule step (default 10)")
    p.add_argument("--lr-gamma", type=float, default=0.8, help="with --lr-schedule step (default 0.8)")
    p.add_argument("--ssim-weight", type=float, default=1.0, help="lambda in PIXEL + lambda*(1-SSIM)")
    # choices: train.losses.PIXEL_LOSSES, not imported here (the train package needs torch at --help time)
    p.add_argument("--pixel-loss", choices=["mse", "charbonnier", "l1"], default="mse",
                   help="pixel term of the loss: mse (the paper, default), charbonnier (robust L1) or l1 (the seed "
                        "U-Nets' loss)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="off",
                   help="CPU bf16 autocast (default off); auto: on only where the CPU has bf16 hardware (AVX512-BF16, "
                        "AMX, Arm), 1.5-1.6x faster at FP32's quality (docs/benchmarks.md); may change on --resume")
    p.add_argument("--no-bf16", dest="bf16", action="store_const", const="off", help="same as --bf16 off")
    p.add_argument("--val-count", type=int, default=12, help="training pairs held out for validation")
    p.add_argument("--val-every", type=int, default=1, metavar="N",
                   help="validate (and refresh last.safetensors) every N epochs and at the last; "
                        "may change on --resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-seed", type=int, default=None,
                   help="seed of the held-out split alone (default: --seed); keeps validation "
                        "fixed across seeds")
    add_val_group_argument(p)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--init", default=None, help="start from these weights (e.g. the shipped model)")
    p.add_argument("--synthetic-prob", type=float, default=0.0, help="share of samples darkened synthetically")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where to train (default auto: CUDA when a GPU is visible); under torchrun, cuda "
                        "gives each process the GPU of its LOCAL_RANK; may change on --resume")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision on CUDA (default auto: bf16 autocast where the GPU has bf16, fp16 "
                        "with a gradient scaler otherwise; off: FP32); on the CPU --bf16 decides")
    p.add_argument("--workers", type=int, default=-1, metavar="N",
                   help="DataLoader processes cutting and augmenting crops ahead of the training loop "
                        "(default: up to 4 per GPU, none on the CPU); the batches are the same for any N")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--log-every", type=int, default=50, metavar="N",
                   help="when stderr is not a terminal, a progress line (loss, samples/s, ETA) every N "
                        "steps; 0: none (on a terminal a progress bar shows; DFN_PROGRESS=1 forces it)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999) and validate/save it, "
                        "with BatchNorm statistics re-estimated for it")
    p.add_argument("--freeze-bn", action="store_true",
                   help="keep BatchNorm statistics fixed at those of --init (fine-tuning on big crops, small batches)")
    p.add_argument("--targets", default=None, metavar="DIR",
                   help="distil: train toward the images in DIR named as the low frames (a teacher's outputs, "
                        "e.g. dfn enhance --tta LOW -o DIR); validation still uses the ground truth")
    p.add_argument("--targets-mix", type=float, default=1.0, metavar="W",
                   help="teacher's share of the training target: (1-W)*ground truth + W*teacher (default 1)")
    p.add_argument("--teacher", default=None, metavar="WEIGHTS",
                   help="distil on the fly: train toward this model's output on the same input (a weights "
                        "file or shipped name); --targets-mix blends it with the ground truth. --qat: its "
                        "--init in float by default (pass --teacher none to train on the ground truth)")
    p.add_argument("--unpaired", action="store_true",
                   help="train a CycleGAN (models with a discriminator: cyclegan-ema-aspp): the low- and "
                        "normal-light images as two unpaired domains; validation stays paired")
    p.add_argument("--unpaired-extra", default=None, metavar="DIR",
                   help="with --unpaired: more low-light photos without ground truth (e.g. DICM/LIME)")
    _add_qat_arguments(p)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (smoke tests)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def _add_qat_arguments(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("quantization-aware fine-tuning (docs/training.md)")
    q.add_argument("--qat", action="store_true",
                   help="fine-tune --init's weights (default: the shipped model) with every convolution "
                        "fake-quantized as TensorRT runs INT8; export the result with dfn export --precision "
                        "int8")
    # choices: train.qat.CALIB_METHODS, not imported here (torch at --help time)
    q.add_argument("--qat-calib", choices=["auto", "frames", "percentile", "max", "mse"], default="auto",
                   help="how --qat sets each convolution's input range before the first step, on 16 whole "
                        "training frames: frames = the 75th percentile over the frames of each frame's peak "
                        "(dark frames keep their resolution), percentile = the 99.99th percentile of |x| "
                        "pooled over all frames, max, or mse = the least squared quantization error; "
                        "auto (default): frames for an enhancer, percentile for SR")
    q.add_argument("--qat-ranges", choices=["fixed", "learned"], default="fixed",
                   help="learned: the calibrated input ranges train with the weights (LSQ); fixed: they stay "
                        "as calibrated (default)")


def init_of(args: argparse.Namespace) -> str | None:
    """--init, where --qat defaults to the shipped weights of --model."""
    return args.init or (args.model if args.qat else None)


def teacher_of(args: argparse.Namespace) -> str | None:
    """--teacher, where --qat defaults to its own float --init (the network it learns to reproduce in INT8)."""
    if args.teacher is not None:
        return None if args.teacher.lower() == "none" else args.teacher
    return init_of(args) if args.qat and not args.targets else None


def run(args: argparse.Namespace) -> int:
    from deepfusionnet.errors import require

    require("torch", "train")
    from deepfusionnet.output import emit_json
    from deepfusionnet.train.trainer import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out or f"runs/{args.model}", model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, crop=args.crop, lr=args.lr, lr_schedule=args.lr_schedule,
        lr_step_epochs=args.lr_step_epochs, lr_gamma=args.lr_gamma,
        ssim_weight=args.ssim_weight, pixel_loss=args.pixel_loss, bf16=args.bf16, val_count=args.val_count,
        val_every=args.val_every, seed=args.seed, val_seed=args.val_seed, val_group=args.val_group,
        checkpoint_minutes=args.checkpoint_minutes, synthetic_prob=args.synthetic_prob,
        init=init_of(args), threads=args.threads, max_steps=args.max_steps, ema_decay=args.ema,
        freeze_bn=args.freeze_bn, targets=args.targets, targets_mix=args.targets_mix, teacher=teacher_of(args),
        device=args.device, amp=args.amp,
        workers=args.workers, compile=args.compile, log_every=args.log_every, unpaired=args.unpaired,
        unpaired_extra=args.unpaired_extra, qat=args.qat, qat_calib=args.qat_calib,
        qat_ranges=args.qat_ranges)
    if args.unpaired:
        from deepfusionnet.train.unpaired import train_unpaired

        result = train_unpaired(cfg, resume=args.resume)
    else:
        result = train(cfg, resume=args.resume)
    if args.json:
        emit_json(result)
    return 0
