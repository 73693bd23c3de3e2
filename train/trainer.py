"""The training loop: config, checkpoints that survive kill -9, exact resume, validation, DDP.

Exact resume without saving iterator state: every epoch's sample order and every sample's crop and
augmentation come from RNGs seeded by ``(seed, epoch, position)`` (``data.SampleStream``), so a run
restarted at ``(epoch, step)`` replays the very same batches, on any device and any number of
processes (``--batch-size`` is the global batch, split over the processes).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import atomic_write_bytes, remove_abandoned_temporaries
from deepfusionnet.runtime.metrics import psnr, ssim
from deepfusionnet.runtime.processing import crop, pad_to_multiple, to_image, to_tensor
from deepfusionnet.train import data as D
from deepfusionnet.train import device as dev
from deepfusionnet.train.losses import PIXEL_LOSSES, hybrid_loss
from deepfusionnet.runtime.signals import first_signal_as_flag
from deepfusionnet.train.models import create_model, get_spec, model_names
from deepfusionnet.train.weights import load_model, load_pickle_safely, save_weights


LR_SCHEDULES = ("constant", "cosine", "step")


def unpaired_models() -> list[str]:
    return [n for n in model_names() if get_spec(n).discriminator is not None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run folder."""

    data: str
    out: str = "runs/deepfusionnet"
    model: str = "deepfusionnet"
    epochs: int = 200
    batch_size: int = 8
    crop: int = 128  # LR crop for SR; HR is 2x. 0: whole frames (enhancer only)
    lr: float = 1e-4  # the paper's Adam 1e-4
    lr_schedule: str = "constant"  # constant | cosine | step (x lr_gamma every lr_step_epochs, the SID U-Net's)
    min_lr: float = 1e-6
    lr_step_epochs: int = 10
    lr_gamma: float = 0.8
    ssim_weight: float = 1.0
    pixel_loss: str = "mse"  # mse (the paper) | charbonnier (robust L1); the pixel term of the loss
    # CPU autocast: on | off | auto (on where the CPU has bf16 hardware; see has_native_bf16). Off by default
    # until a second seed confirms the one controlled A/B (no quality cost, docs/benchmarks.md), and FP32
    # kernels keep resumed runs bitwise equal to straight ones.
    bf16: str = "off"
    val_count: int = 12
    # Validate every N epochs (and at the last). With an average (--ema) each validation first re-estimates
    # BatchNorm on whole frames; on LOL that and the 40-frame validation cost about as much as an epoch of
    # 256-pixel crops, so long from-scratch runs validate less often. Does not change what is learned.
    val_every: int = 1
    seed: int = 0
    # Seed of the held-out split alone (None = --seed): runs that differ in --seed (data order, crops,
    # init) can then be compared, and their weights averaged, on the same validation pairs.
    val_seed: int | None = None
    # How held-out pairs are grouped: "scene" (look-alike normal-light images stay together) or
    # "image" (only pairs sharing one normal-light image).
    val_group: str = "scene"
    checkpoint_minutes: float = 5.0
    init: str | None = None  # start from these weights (e.g. the shipped ones)
    synthetic_prob: float = 0.0
    threads: int = 0
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit); for smoke tests
    # Exponential moving average of weights and BatchNorm statistics (0 = off). Validation, best and last
    # weights then come from the average: epoch-to-epoch validation swings of 0.5-1 dB were measured on
    # LOL, much of it BatchNorm running-statistics noise.
    ema_decay: float = 0.0
    # Keep BatchNorm in inference mode while training: its running statistics stay those of --init and only
    # the weights (BN's affine ones included) learn. For fine-tuning on large crops or full frames at a
    # batch size too small for batch statistics; training then sees exactly the normalisation inference uses.
    freeze_bn: bool = False
    # Distillation: train toward (1 - targets_mix) * ground truth + targets_mix * the image of the same
    # name in this folder (a teacher's outputs); validation still scores against the ground truth.
    targets: str | None = None
    targets_mix: float = 1.0
    # Distillation on the fly: train toward this model's output on the very input the student sees (a
    # weights file or shipped name), so crops and augmentations keep a matching target. --qat's default is
    # its own --init in float: quantization-aware fine-tuning then learns to reproduce the float network.
    teacher: str | None = None
    # Where and how fast it runs; none of these changes what is learned beyond float rounding, so all may
    # change on --resume. device: auto | cpu | cuda | cuda:N (auto: CUDA when visible). amp: mixed precision
    # on CUDA (auto: bf16 where the GPU has it, fp16 with a gradient scaler otherwise; --bf16 decides on the
    # CPU). workers: DataLoader processes cutting crops ahead of the loop (-1: 4 per GPU, none on the CPU).
    device: str = "auto"
    amp: str = "auto"
    workers: int = -1
    compile: bool = False  # torch.compile the training forward
    log_every: int = 50  # a progress line every N steps when stderr is not a terminal (0: none)
    # Unpaired training (CycleGAN, train/unpaired.py) for models registered with a discriminator; extra
    # low-light photos without ground truth join the low-light domain.
    unpaired: bool = False
    unpaired_extra: str | None = None
    # Quantization-aware fine-tuning (train/qat.py): every convolution fake-quantized as TensorRT runs INT8,
    # input ranges calibrated ("frames", "percentile", "max" or "mse") on whole training frames first.
    qat: bool = False
    qat_calib: str = "auto"  # auto: per-frame peaks for an enhancer, the pooled percentile for SR (qat.py)
    # "learned": the calibrated input ranges train along with the weights (LSQ); "fixed": they stay put.
    qat_ranges: str = "fixed"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DFNError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> None:
        get_spec(self.model)
        if self.lr_schedule not in LR_SCHEDULES:
            raise DFNError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.lr_step_epochs < 1 or not 0.0 < self.lr_gamma <= 1.0:
            raise DFNError("--lr-step-epochs must be positive and --lr-gamma in (0, 1]")
        multiple = max(8, get_spec(self.model).multiple)  # a crop the network's pooling divides evenly
        if self.crop % multiple or self.crop < 0:
            raise DFNError(f"--crop must be a multiple of {multiple} for {self.model} (or 0: whole frames)")
        if self.crop == 0 and D.WHOLE_FRAME_MULTIPLE % multiple:
            raise DFNError(f"--crop 0 cuts whole frames to multiples of {D.WHOLE_FRAME_MULTIPLE}, and "
                           f"{self.model} needs multiples of {multiple}; train it on crops")
        if self.crop == 0 and get_spec(self.model).scale != 1:
            raise DFNError("--crop 0 (whole frames) is for the enhancer; the SR model trains on crops")
        if self.epochs < 1 or self.batch_size < 1:
            raise DFNError("--epochs and --batch-size must be positive")
        if self.val_every < 1:
            raise DFNError("--val-every must be a positive number of epochs")
        if self.val_group not in D.VAL_GROUPS:
            raise DFNError(f"--val-group must be one of {', '.join(D.VAL_GROUPS)}")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise DFNError(f"--pixel-loss must be one of {', '.join(PIXEL_LOSSES)}")
        if self.bf16 not in ("auto", "on", "off"):
            raise DFNError("--bf16 must be auto, on or off")
        if self.amp not in dev.AMP_CHOICES:
            raise DFNError(f"--amp must be one of {', '.join(dev.AMP_CHOICES)}")
        if self.workers < -1 or self.log_every < 0:
            raise DFNError("--workers and --log-every must be 0 or more")
        if not 0.0 <= self.ema_decay < 1.0:
            raise DFNError("--ema must be in [0, 1), e.g. 0.999 (0 turns it off)")
        if self.freeze_bn and not self.init:
            raise DFNError("--freeze-bn keeps the BatchNorm statistics of --init; pass --init WEIGHTS with it")
        if self.qat:
            self._validate_qat()
        if not 0.0 < self.targets_mix <= 1.0:
            raise DFNError("--targets-mix must be in (0, 1]: the teacher's share of the training target")
        if self.unpaired_extra and not self.unpaired:
            raise DFNError("--unpaired-extra adds photos to unpaired training; pass --unpaired with it")
        if self.unpaired and get_spec(self.model).discriminator is None:
            raise DFNError(f"--unpaired trains a CycleGAN; {self.model} has no discriminator "
                           f"(models with one: {', '.join(unpaired_models())})")
        if self.teacher and self.targets:
            raise DFNError("--teacher and --targets are two kinds of teacher; pass one")
        if self.targets and get_spec(self.model).scale != 1:
            raise DFNError("--targets applies to the enhancer; the SR model's targets are the normal-light images")

    def _validate_qat(self) -> None:
        from deepfusionnet.train.qat import CALIB_METHODS, RANGE_MODES

        if not self.init:
            raise DFNError("--qat fine-tunes trained weights; pass --init WEIGHTS (dfn train --qat defaults to "
                           "the shipped model)")
        if self.qat_calib not in ("auto", *CALIB_METHODS):
            raise DFNError(f"--qat-calib must be one of auto, {', '.join(CALIB_METHODS)}")
        if self.qat_ranges not in RANGE_MODES:
            raise DFNError(f"--qat-ranges must be one of {', '.join(RANGE_MODES)}")
        if self.unpaired:
            raise DFNError("--qat fine-tunes paired runs; it does not combine with --unpaired")

# Options that may change between a run and its resumption without changing what is learned. "out": a run
# folder may be moved. "bf16": a run may move to a machine with(out) bf16 hardware; like "threads" it changes
# the arithmetic, not the run, and the checkpoint records which one ran. "device", "amp": likewise a run may
# move between a GPU and a CPU (the checkpoint holds CPU tensors); the log says when it does.
_RUN_CONTROL = {"max_steps", "threads", "checkpoint_minutes", "out", "val_every", "bf16", "device", "amp",
                "workers", "compile", "log_every"}


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate at optimizer step ``step`` under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (step // steps_per_epoch // cfg.lr_step_epochs)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def validation_split(pairs: D.PairSet, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """(training, held-out) indices of ``pairs`` for ``cfg``: ``val_seed`` when given, else ``seed``."""
    return D.split_validation(pairs, cfg.val_count, cfg.seed if cfg.val_seed is None else cfg.val_seed,
                              cfg.val_group)


def _world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as torchrun sets them; ``(0, 1)`` for a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _dist(device: torch.device) -> tuple[int, int]:
    """Join the torchrun process group (NCCL between GPUs, gloo between CPUs); ``(rank, world)``."""
    rank, world = _world()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(dev.distributed_backend(device),
                                             device_id=device if device.type == "cuda" else None)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The pairs process ``rank`` of ``world`` trains on in an epoch, in order (``data.ShardSampler``
    deals the epoch's positions round-robin; shown here without the wrap-around of tiny data sets)."""
    return D.epoch_permutation(n, seed, epoch)[rank::world]


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BatchNorm layer in inference mode: normalise with, and never update, the running statistics."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _load_checkpoint(out: Path, cfg: TrainConfig) -> dict:
    """The run's checkpoint, after checking that ``cfg`` is the configuration it was started with."""
    ckpt_path = out / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise DFNError(f"{out}: nothing to resume (no checkpoint.pt; was the run started with this --out?)")
    try:
        # An option newer than the run counts as started with its default value.
        saved = json.loads((out / "config.json").read_text())
        saved.setdefault("val_group", "image")  # runs from before scene grouping held out by image
        saved_cfg = {**dataclasses.asdict(TrainConfig(data=cfg.data)), **saved}
    except (OSError, ValueError) as exc:
        raise DFNError(f"{out / 'config.json'}: missing or unreadable ({exc})") from None
    diff = [f"{k}: {saved_cfg[k]!r} -> {v!r}" for k, v in dataclasses.asdict(cfg).items()
            if k not in _RUN_CONTROL and saved_cfg[k] != v]
    if diff:
        raise DFNError(f"{out}: --resume needs the options the run was started with; changed: {', '.join(diff)}")
    # Refused in the words --model, info and --init use (naming a code-running pickle's global).
    state = load_pickle_safely(ckpt_path, "unreadable checkpoint ({reason})")
    need = {"model", "optimizer", "epoch", "step", "best", "history", "torch_rng"}
    if not isinstance(state, dict) or not need <= set(state):
        raise DFNError(f"{ckpt_path}: unreadable checkpoint (entries missing: not one dfn train wrote)")
    return state


def _atomic_torch_save(obj, path: Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def on_cpu(obj):
    """``obj`` (dicts, lists, tensors) with every tensor a contiguous CPU copy: what a checkpoint holds, so
    a run trained on a GPU resumes on a CPU and back (channels-last strides do not travel either)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def whole_frame(lo: np.ndarray, hi: np.ndarray, task: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A pair as the model meets it in use (``dfn eval``'s pairing): the SR model gets ``hi`` (cut to even
    sides) blurred and downscaled 2x by ``rng``'s degradation; enhance-sr gets ``lo`` halved; the enhancer
    gets ``lo`` as it is."""
    if task == "sr":
        hi = hi[: hi.shape[0] // 2 * 2, : hi.shape[1] // 2 * 2]
        lo = D.degrade_for_sr(hi, rng)
    elif task == "enhance-sr":
        hi = hi[: hi.shape[0] // 2 * 2, : hi.shape[1] // 2 * 2]
        lo = D.halve_low(lo)
    return lo, hi


def evaluate_model(model: torch.nn.Module, pairs: D.PairSet, multiple: int, scale: int = 1, task: str = "enhance",
                   device: torch.device | None = None) -> dict:
    """Full-resolution PSNR/SSIM on uint8 outputs, with the runtime's padding (as `dfn eval` does), in
    FP32 on ``device`` (the CPU by default)."""
    model.eval()
    ps, ss = [], []
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for lo, hi in zip(pairs.low, pairs.high):
            lo, hi = whole_frame(lo, hi, task, rng)
            x, size = pad_to_multiple(to_tensor(lo), multiple)
            y = crop(model(torch.from_numpy(x).to(device or "cpu")).float().cpu().numpy(), size, scale)
            out = to_image(y)
            ps.append(psnr(out, hi))
            ss.append(ssim(out, hi))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


BN_REFRESH_FRAMES = 64
QAT_CALIB_FRAMES = 16  # whole frames (600x400 on LOL), about 50 of the export's 320x240 calibration crops
BN_REFRESH_MAX_SIDE = 1024  # larger frames contribute their centre, the size of one runtime tile


def refresh_batchnorm(model: torch.nn.Module, trainset: D.PairSet, cfg: TrainConfig, task: str,
                      multiple: int, device: torch.device | None = None) -> None:
    """Re-estimate ``model``'s BatchNorm statistics on whole training frames (``torch.optim.swa_utils.update_bn``).

    An average of weights that are still moving needs statistics of its own: averaging the running
    statistics along with the weights left a from-scratch enhancer at 13.1 dB on validation where
    its raw weights gave 20.2 and a re-estimate 20.8. Whole frames, as inference sees them, not training
    crops: re-estimated on 32 batches of random 256-pixel crops, the same weights validated anywhere
    from 21.11 to 21.65 dB depending on the draw, so the "best" epoch was partly the luckiest draw; on
    64 or all 246 whole frames they gave 21.36 both times (32 frames: 21.04, too few to average over
    scene brightness; 64 frames in batches of 4, which keeps some between-image variance as training
    batches do: 21.28). Deterministic (the same frames every time, FP32 as inference runs), so the
    training sample stream, and with it an exact ``--resume``, are untouched.
    """
    from torch.optim.swa_utils import update_bn

    with torch.no_grad():
        update_bn(whole_frames(trainset, cfg, task, multiple, BN_REFRESH_FRAMES), model, device=device)


def whole_frames(trainset: D.PairSet, cfg: TrainConfig, task: str, multiple: int, count: int):
    """``count`` whole training frames spread evenly over ``trainset``, as inference meets them (padded,
    at most a ``BN_REFRESH_MAX_SIDE`` centre), one ``(1, 3, H, W)`` tensor at a time (bounded memory)."""
    count = min(count, len(trainset))
    rng = np.random.default_rng([cfg.seed, 0x5EED])  # SR: one fixed degradation per frame

    def centre(img: np.ndarray, limit: int) -> np.ndarray:
        # Bounded memory on big photos; the runtime tiles such frames at --tile 1024 anyway.
        h, w = img.shape[:2]
        y, x = max(0, (h - limit) // 2), max(0, (w - limit) // 2)
        return img[y:y + limit, x:x + limit]

    limit = BN_REFRESH_MAX_SIDE * (1 if task == "enhance" else 2)  # the others halve the frame
    for i in np.linspace(0, len(trainset) - 1, count).round().astype(int):
        lo, _ = whole_frame(centre(trainset.low[i], limit), centre(trainset.high[i], limit), task, rng)
        yield torch.from_numpy(pad_to_multiple(to_tensor(lo), multiple)[0])


class LossLog:
    """The current epoch's per-step losses, each averaged over the processes (a single process's loss on
    the global batch). Read lazily: reading a GPU value makes the CPU wait for the step to finish."""

    def __init__(self, values: list[float], world: int = 1) -> None:
        self.values, self.pending, self.world = list(values), [], world

    def add(self, loss: torch.Tensor) -> None:
        value = loss.detach().float().reshape(1).clone()
        if self.world > 1:  # every process, every step: a collective in the same order everywhere
            torch.distributed.all_reduce(value)
            value /= self.world
        self.pending.append(value)

    def floats(self) -> list[float]:
        if self.pending:
            self.values.extend(torch.cat(self.pending).tolist())
            self.pending = []
        return self.values


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLog:
    """A line every ``every`` optimizer steps for logs, where no progress bar can redraw (stderr not a
    terminal): loss (mean of the last ``every`` steps), samples per second over those steps (all
    processes), and the time left to the run's last step at the pace of this session so far."""

    def __init__(self, every: int, global_batch: int, start_step: int, end_step: int,
                 clock=time.monotonic) -> None:
        self.every, self.batch, self.end, self.clock = every, global_batch, end_step, clock
        self.t0 = self.t_last = clock()
        self.s0 = self.s_last = start_step

    def restart_interval(self, step: int) -> None:
        """Measure samples/s from here (after a validation, which is not training speed)."""
        self.t_last, self.s_last = self.clock(), step

    def due(self, global_step: int) -> bool:
        return bool(self.every) and global_step % self.every == 0

    def line(self, global_step: int, where: str, loss: float) -> str:
        now = self.clock()
        rate = (global_step - self.s_last) * self.batch / max(now - self.t_last, 1e-9)
        eta = (self.end - global_step) * (now - self.t0) / max(global_step - self.s0, 1)
        self.t_last, self.s_last = now, global_step
        return f"{where}: loss {loss:.4f}, {rate:.1f} samples/s, ETA {_hms(eta)}"


def _arithmetic_of(state: dict) -> dev.Arithmetic | None:
    """The arithmetic a checkpoint's run trained with (runs before "arithmetic" recorded bf16 as a flag)."""
    if "arithmetic" in state:
        return dev.ARITHMETIC.get(state["arithmetic"])
    if "autocast" in state:
        return dev.BF16 if state["autocast"] else dev.FP32
    return None


def _placement(device_type: str, world: int) -> str:
    return f"{'the CPU' if device_type == 'cpu' else 'CUDA'} ({world} process{'es' if world > 1 else ''})"


def _keep_hint(device: torch.device, before: dev.Arithmetic) -> str:
    """The option that would have kept arithmetic ``before`` on ``device``."""
    if device.type == "cuda":
        return f"--amp {'off' if before.name == 'fp32' else before.name}"
    if before.name == "fp16":
        return "a GPU with --amp fp16"
    return f"--bf16 {'on' if before.name == 'bf16' else 'off'}"


def say_how_it_runs(cfg: TrainConfig, device: torch.device, world: int, arithmetic: dev.Arithmetic,
                    state: dict | None) -> None:
    """The log's first line (arithmetic, device, processes), and a note for each of them a resume changes."""
    option = f"--amp {cfg.amp}" if device.type == "cuda" else f"--bf16 {cfg.bf16}"
    where = "the CPU" if device.type == "cpu" else str(device)
    procs = f", {world} processes" if world > 1 else ""
    print(f"training with {arithmetic.describe()} on {where}{procs} ({option})", file=sys.stderr, flush=True)
    if state is None:
        return
    before = _placement(state.get("device", "cpu"), state.get("world", 1))
    now = _placement(device.type, world)
    if before != now:
        print(f"note: the run trained on {before} until now and continues on {now}; the global batch stays "
              f"{cfg.batch_size}, so the samples stay the same", file=sys.stderr, flush=True)
    trained_with = _arithmetic_of(state)
    if trained_with is not None and trained_with != arithmetic:
        print(f"note: the run trained with {trained_with.describe()} until now and goes on with "
              f"{arithmetic.describe()}; {_keep_hint(device, trained_with)} would keep it",
              file=sys.stderr, flush=True)


def _finished(out: Path, state: dict, cfg: TrainConfig, rank: int) -> dict:
    """What ``--resume`` of a run that has done all its epochs returns, after saying so."""
    steps = state["history"][-1]["step"] if state["history"] else 0
    if rank == 0:
        best = f" (best validation PSNR {state['best']:.2f} dB)" if state["best"] >= 0 else ""
        print(f"{out}: the run already finished its {cfg.epochs} epochs{best}; nothing to resume. To train "
              f"on, start a new run from its weights with --init {out / 'last.safetensors'}",
              file=sys.stderr, flush=True)
    return {"epochs_done": state["epoch"], "steps": steps, "best_val_psnr": state["best"],
            "history": state["history"], "out": str(out), "finished": True}


def _backward_and_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler) -> None:
    """Backward pass and optimizer step, through the gradient scaler when fp16 needs one."""
    if scaler is None:
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)  # skips the step when a gradient overflowed; the scale then backs off
    scaler.update()


def _open_run(cfg: TrainConfig, resume: bool) -> dict | tuple:
    """Check ``cfg``, read a resumed run's checkpoint, pick the device and arithmetic and join the process
    group: ``(state, device, arithmetic, rank, world)``, or the result of a run that already finished."""
    cfg.validate()
    if cfg.unpaired:
        raise DFNError("unpaired runs train with deepfusionnet.train.unpaired.train_unpaired")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    # Before the data: a resumed run's options decide its split, so a changed one is named first.
    state = _load_checkpoint(out, cfg) if resume else None
    if not resume and ckpt_path.exists():  # checked on every rank, so no rank starts while another refuses
        raise DFNError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    if state is not None and state["epoch"] >= cfg.epochs:  # said at once, before the data loads
        return _finished(out, state, cfg, _world()[0])
    # Before the data too: --device cuda on a machine without one is a one-line error, not minutes later.
    caps = dev.probe()
    device = dev.resolve_device(cfg.device, caps, *dev.local_rank())
    # QAT emulates INT8 in FP32 arithmetic, as the export's Q/DQ graph defines it: no autocast.
    bf16, amp = ("off", "off") if cfg.qat else (cfg.bf16, cfg.amp)
    arithmetic = dev.choose_arithmetic(device, bf16, amp, caps)
    if cfg.batch_size % _world()[1]:  # before joining the group: every process refuses alike, none waits
        raise DFNError(f"--batch-size {cfg.batch_size} is the global batch; it does not split evenly over "
                       f"{_world()[1]} processes (use a multiple of {_world()[1]})")
    dev.configure(device, arithmetic)
    rank, world = _dist(device)
    return state, device, arithmetic, rank, world


def _prepare_data(cfg: TrainConfig, task: str) -> tuple[D.PairSet, D.PairSet]:
    """``(training pairs, held-out pairs)``, after checking that the training pairs fit ``cfg``'s crops."""
    pairs = D.load_pairs(cfg.data)
    train_idx, val_idx = validation_split(pairs, cfg)
    if len(train_idx) == 0:
        raise DFNError(f"{cfg.data}: no training pairs left after holding out {cfg.val_count} for validation")
    val = pairs.subset(val_idx)
    trainset = pairs.subset(train_idx)
    if cfg.targets:
        trainset = D.with_targets(trainset, cfg.targets, cfg.targets_mix)
    # Refuse now, not at the first sample; SR crops the normal-light image at 2x the LR crop.
    D.check_crop_fits(trainset.high if task == "sr" else trainset.low, cfg.crop * (1 if task == "enhance" else 2))
    if cfg.crop == 0 and cfg.batch_size > 1:
        sizes = {D.whole_frame_size(img) for img in trainset.low}
        if len(sizes) > 1:
            raise DFNError(f"{cfg.data}: --crop 0 batches whole frames, which come in {len(sizes)} sizes here "
                           f"({', '.join(f'{w}x{h}' for h, w in sorted(sizes)[:3])}...); use --batch-size 1")
    return trainset, val


def _calibrate_qat(model: torch.nn.Module, cfg: TrainConfig, trainset: D.PairSet | None,
                   device: torch.device) -> None:
    """Set the QAT input ranges from ``QAT_CALIB_FRAMES`` whole training frames (every process alike)."""
    from deepfusionnet.train import qat

    if trainset is None or not len(trainset):
        raise DFNError("--qat calibrates on training frames; none were given")
    spec = get_spec(cfg.model)
    frames = [x.to(device) for x in whole_frames(trainset, cfg, spec.task, spec.multiple, QAT_CALIB_FRAMES)]
    t0 = time.monotonic()
    method = qat.default_calibration(spec.task) if cfg.qat_calib == "auto" else cfg.qat_calib
    ranges = qat.calibrate(model, frames, method)
    if _world()[0] == 0:
        print(f"QAT: {len(ranges)} convolutions fake-quantized (INT8, per-channel weights, per-tensor "
              f"inputs); input ranges calibrated ({method}) on {len(frames)} training frames in "
              f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def load_teacher(name: str, model: str, device: torch.device) -> torch.nn.Module:
    """The ``--teacher`` network (weights file or shipped name) in float and inference mode on ``device``;
    it must do ``model``'s job (the same task and scale)."""
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.train import qat

    path = resolve(name, "weights").path
    teacher, teacher_name = load_model(path)
    want, got = get_spec(model), get_spec(teacher_name)
    if (want.task, want.scale) != (got.task, got.scale):
        raise DFNError(f"{path}: --teacher holds {teacher_name} ({got.task}), which does not do {model}'s job "
                       f"({want.task})")
    if qat.is_quantized(teacher):
        raise DFNError(f"{path}: --teacher holds quantization-aware weights; give a float model")
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def _build_model(cfg: TrainConfig, device: torch.device, resume: bool,
                 trainset: D.PairSet | None = None) -> tuple:
    """``(model, optimizer, weight average or None)``: the model seeded by ``cfg.seed`` (or --init's weights)
    on ``device``; with ``cfg.qat`` every convolution fake-quantized, its input ranges calibrated on
    ``trainset`` for a new run (a resumed one reads them from the checkpoint)."""
    from deepfusionnet.train import qat

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model)
    if cfg.qat:
        qat.quantize_convs(model)
    calibrated = False
    if cfg.init and not resume:
        from deepfusionnet.runtime.artifacts import resolve

        init_path = resolve(cfg.init, "weights").path  # a shipped name or a file
        init_model, init_name = load_model(init_path, name=cfg.model)
        if init_name != cfg.model:  # SR weights without the skip load as the paper's block
            raise DFNError(f"{init_path}: holds {init_name} weights; train them on with --model {init_name}")
        state = init_model.state_dict()
        # QAT weights go on with their trained ranges under --qat, as float weights without it.
        calibrated = cfg.qat and qat.is_quantized(init_model)
        strict = calibrated or not cfg.qat  # float weights into a QAT model: only the ranges are missing
        model.load_state_dict(state if calibrated else qat.float_state(state), strict=strict)
    model.to(device)
    if cfg.qat and not resume and not calibrated:
        _calibrate_qat(model, cfg, trainset, device)
    if dev.channels_last(device):
        model.to(memory_format=torch.channels_last)
    ranges = qat.learn_ranges(model) if cfg.qat and cfg.qat_ranges == "learned" else []
    learned = {id(p) for g in ranges for p in g["params"]}
    weights = [p for p in model.parameters() if id(p) not in learned]
    opt = torch.optim.Adam([{"params": weights}, *ranges], lr=cfg.lr)
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # Weights only: BatchNorm statistics are re-estimated for the averaged weights (see refresh_batchnorm).
        # A copy made before _Run.start synchronises BatchNorm: rank 0 alone re-estimates its statistics.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
    return model, opt, ema


@dataclass(eq=False)
class _Run:
    """A paired run in progress: what ``train`` sets up once, and the counters its loop advances."""

    cfg: TrainConfig
    spec: object  # the model's registry entry (task, multiple, scale)
    device: torch.device
    arithmetic: dev.Arithmetic
    rank: int
    world: int
    trainset: D.PairSet
    val: D.PairSet
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    ema: torch.nn.Module | None
    teacher: torch.nn.Module | None = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float = -1.0
    history: list = dataclasses.field(default_factory=list)
    losses: LossLog | None = None
    scaler: object = None
    net: torch.nn.Module | None = None
    sampler: D.ShardSampler | None = None
    loader: torch.utils.data.DataLoader | None = None
    memory_format: torch.memory_format = torch.preserve_format
    progress: ProgressLog | None = None
    last_ckpt: float = 0.0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def kept(self) -> torch.nn.Module:
        """What is validated and saved as weights: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.trainset) // self.cfg.batch_size)  # global batches: any number of processes

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    def lr_at(self, step: int) -> float:
        return learning_rate(self.cfg, step, self.steps_per_epoch, self.total_steps)

    def restore(self, state: dict | None) -> None:
        """Pick up where ``state`` (a checkpoint) left off; a new run writes its ``config.json`` instead."""
        cfg, out = self.cfg, self.out
        losses = []
        if state is not None:
            if state.get("world", 1) > 1 and "global_batch" not in state:
                raise DFNError(f"{self.ckpt_path}: a {state['world']}-process run from before --batch-size "
                               f"meant the global batch cannot resume exactly; start a new run with --init "
                               f"{out / 'last.safetensors'}")
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            if self.ema is not None:
                if "ema" not in state:
                    raise DFNError(f"{self.ckpt_path}: the checkpoint holds no weight average to resume "
                                   "--ema with")
                self.ema.load_state_dict(state["ema"])
            self.epoch, self.step_in_epoch, self.best = state["epoch"], state["step"], state["best"]
            self.history = state["history"]
            losses = list(state.get("epoch_losses", []))
            torch.set_rng_state(state["torch_rng"])
        elif self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2).encode())
        if self.rank == 0:
            remove_abandoned_temporaries(out)  # temporaries of a write cut short by kill -9
        self.losses = LossLog(losses, self.world)

    def start(self, state: dict | None) -> None:
        """Gradient scaler, the log's opening lines, the (distributed, compiled) network and the batches."""
        cfg, device, world = self.cfg, self.device, self.world
        self.scaler = dev.make_scaler(device, self.arithmetic)
        if self.scaler is not None and state is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = self.epoch * self.steps_per_epoch + self.step_in_epoch
        if self.rank == 0:  # only once the inputs are known good: a bad run fails with its one error line
            say_how_it_runs(cfg, device, world, self.arithmetic, state)
            if state is not None:  # where the run picks up, so a log shows that nothing was redone or skipped
                print(f"resuming {self.out} at epoch {self.epoch + 1}/{cfg.epochs}, "
                      f"step {self.step_in_epoch}/{self.steps_per_epoch} (global step {self.global_step})",
                      file=sys.stderr, flush=True)
        self.net = self.model
        if world > 1:
            from deepfusionnet.train.sync_batchnorm import convert_sync_batchnorm

            # Statistics of the global batch, as one process computes them: a 2-process run trains the model a
            # 1-process run of the same global batch trains.
            ids = [device] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(convert_sync_batchnorm(self.model, device),
                                                                 device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        workers = cfg.workers
        if workers < 0:
            workers = dev.default_workers(device, os.cpu_count(), dev.local_rank()[1])
        self.sampler = D.ShardSampler(self.steps_per_epoch, cfg.batch_size, self.rank, world)
        stream = D.SampleStream(self.trainset, cfg.seed, cfg.batch_size, cfg.crop, self.task,
                                cfg.synthetic_prob)
        self.loader = D.make_loader(stream, self.sampler, workers, pin_memory=device.type == "cuda")
        self.memory_format = torch.channels_last if dev.channels_last(device) else torch.preserve_format
        self.progress = ProgressLog(cfg.log_every, cfg.batch_size, self.global_step,
                                    min(self.total_steps, cfg.max_steps or self.total_steps))
        self.last_ckpt = time.monotonic()

    def checkpoint(self, ep: int, st: int, epoch_losses: list[float]) -> None:
        """Write ``checkpoint.pt`` (rank 0) for a resume at epoch ``ep``, step ``st``."""
        if self.rank != 0:
            return
        _atomic_torch_save(on_cpu({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": ep, "step": st,
            "best": self.best, "history": self.history, "torch_rng": torch.get_rng_state(),
            "epoch_losses": list(epoch_losses), "world": self.world, "global_batch": self.cfg.batch_size,
            "device": self.device.type, "autocast": self.arithmetic.dtype is not None,
            "arithmetic": self.arithmetic.name,
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {})}), self.ckpt_path)

    def averaged(self) -> torch.nn.Module:
        """``kept``, ready to validate or save: an average gets statistics of its own (frozen ones stay)."""
        if self.ema is not None and not self.cfg.freeze_bn:
            refresh_batchnorm(self.kept, self.trainset, self.cfg, self.task, self.spec.multiple, self.device)
        return self.kept

    def save_last(self, meta: dict) -> None:
        save_weights(self.averaged(), self.cfg.model, self.out / "last.safetensors", meta)

    def stop_if_interrupted(self, flag: dict) -> None:
        """After a Ctrl-C / SIGTERM (``first_signal_as_flag``): checkpoint, save the weights and stop."""
        if flag["signal"] is None:
            return
        self.checkpoint(self.epoch, self.step_in_epoch, self.losses.floats())
        if self.rank == 0:
            # Said before last.safetensors: with --ema that re-estimates BatchNorm first, which takes a while.
            print(f"checkpoint saved at epoch {self.epoch + 1}, "
                  f"step {self.step_in_epoch}/{self.steps_per_epoch}; run the same command with --resume to "
                  "continue (writing last.safetensors)",
                  file=sys.stderr, flush=True)
            self.save_last({"epoch": self.epoch, "step": self.global_step})
        raise KeyboardInterrupt

    def train_step(self, batch) -> None:
        """One optimizer step on ``batch`` (this process's share of the global batch)."""
        cfg = self.cfg
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        x = x.to(memory_format=self.memory_format)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.global_step) * g.get("lr_scale", 1.0)
        if self.teacher is not None:
            with torch.no_grad():
                y = torch.lerp(y, self.teacher(x).float().clamp(0, 1), cfg.targets_mix)
        with dev.autocast(self.device, self.arithmetic):
            pred = self.net(x)
        loss, _ = hybrid_loss(pred, y, cfg.ssim_weight, cfg.pixel_loss)
        self.opt.zero_grad(set_to_none=True)
        _backward_and_step(loss, self.opt, self.scaler)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1
        self.losses.add(loss)

    def report_step(self, bar, step: int) -> None:
        """The loss on a terminal's progress bar, or a progress line in a log every ``--log-every`` steps."""
        if not bar.disable:  # a terminal's bar: reading the loss every step is fine there
            bar.set_postfix(loss=f"{np.mean(self.losses.floats()[-20:]):.4f}",
                            best_val_psnr=f"{self.best:.2f}")
        elif self.rank == 0 and self.progress.due(self.global_step):
            where = f"epoch {self.epoch + 1}/{self.cfg.epochs} step {step + 1}/{self.steps_per_epoch}"
            loss_now = float(np.mean(self.losses.floats()[-self.cfg.log_every:]))
            print(self.progress.line(self.global_step, where, loss_now), file=sys.stderr, flush=True)

    def train_epoch(self, interrupted: dict, tqdm) -> bool:
        """Train the rest of the current epoch; False when --max-steps stopped it part-way (then saved)."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        batches = iter(self.loader)
        self.progress.restart_interval(self.global_step)
        self.net.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        quiet = self.rank != 0 or not sys.stderr.isatty() and os.environ.get("DFN_PROGRESS") != "1"
        steps = range(self.step_in_epoch, self.steps_per_epoch)
        bar = tqdm(steps, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", file=sys.stderr, disable=quiet,
                   initial=self.step_in_epoch, total=self.steps_per_epoch)
        for step in bar:
            self.train_step(next(batches))
            self.report_step(bar, step)
            self.step_in_epoch = step + 1
            if time.monotonic() - self.last_ckpt > cfg.checkpoint_minutes * 60:
                self.checkpoint(self.epoch, self.step_in_epoch, self.losses.floats())
                self.last_ckpt = time.monotonic()
            self.stop_if_interrupted(interrupted)
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        if self.step_in_epoch < self.steps_per_epoch:  # stopped by --max-steps inside an epoch
            self.checkpoint(self.epoch, self.step_in_epoch, self.losses.floats())
            if self.rank == 0:
                self.save_last({"epoch": self.epoch, "step": self.global_step})
            return False
        return True

    def validate(self, row: dict) -> None:
        """Rank 0: validate the kept weights into ``row``; write best.safetensors (a new best) and last."""
        cfg = self.cfg
        self.averaged()
        if len(self.val):
            spec = self.spec
            m = evaluate_model(self.kept, self.val, spec.multiple, spec.scale, self.task, self.device)
            row.update(val_psnr=m["psnr"], val_ssim=m["ssim"])
            if m["psnr"] > self.best:
                self.best = m["psnr"]
                save_weights(self.kept, cfg.model, self.out / "best.safetensors",
                             {"epoch": self.epoch, "val_psnr": f"{self.best:.3f}"})
        save_weights(self.kept, cfg.model, self.out / "last.safetensors", {"epoch": self.epoch})

    def validate_start(self) -> None:
        """A new QAT run validates its calibrated network before the first step (epoch 0), so best.safetensors
        keeps it when fine-tuning does not beat it: on the enhancer, calibration alone scored 22.44 dB on
        40 held-out pairs and one epoch of fine-tuning 22.39 (benchmarks/experiments.md)."""
        row = {"epoch": 0, "step": 0, "lr": self.lr_at(0), "loss": float("nan")}
        self.validate(row)
        self.log_row(row)

    def log_row(self, row: dict) -> None:
        """Rank 0: ``row`` into the history, metrics.json/csv and the log."""
        self.history.append(row)
        _write_metrics(self.out, self.history)
        print(json.dumps(row), file=sys.stderr, flush=True)

    def end_epoch(self, interrupted: dict) -> bool:
        """Close a finished epoch: validation when due, metrics, checkpoint; True when --max-steps ends the
        run."""
        cfg = self.cfg
        self.epoch += 1
        self.step_in_epoch = 0
        done = self.losses.floats()
        row = {"epoch": self.epoch, "step": self.global_step, "lr": self.lr_at(self.global_step),
               "loss": float(np.mean(done)) if done else float("nan")}
        # The BatchNorm refresh and last.safetensors wait for a validated epoch; an interrupt or the
        # last epoch writes them anyway (stop_if_interrupted, and the last epoch always validates).
        validate_now = self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs or not len(self.val)
        if self.rank == 0 and validate_now:
            self.validate(row)
        if self.rank == 0:
            self.log_row(row)
        self.losses = LossLog([], self.world)
        self.checkpoint(self.epoch, 0, [])
        self.last_ckpt = time.monotonic()
        self.stop_if_interrupted(interrupted)
        if cfg.max_steps and self.global_step >= cfg.max_steps:
            if self.rank == 0 and not validate_now:
                self.save_last({"epoch": self.epoch})
            return True
        return False


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train according to ``cfg``; returns the final metrics. Only rank 0 writes files."""
    from tqdm import tqdm

    opened = _open_run(cfg, resume)
    if isinstance(opened, dict):  # a resumed run that had already finished
        return opened
    state, device, arithmetic, rank, world = opened
    spec = get_spec(cfg.model)
    trainset, val = _prepare_data(cfg, spec.task)
    model, opt, ema = _build_model(cfg, device, resume, trainset)
    teacher = load_teacher(cfg.teacher, cfg.model, device) if cfg.teacher else None
    run = _Run(cfg, spec, device, arithmetic, rank, world, trainset, val, model, opt, ema, teacher)
    run.restore(state)
    run.start(state)
    if cfg.qat and state is None and rank == 0 and len(val):
        run.validate_start()
    # The first Ctrl-C / SIGTERM only sets a flag the loop checks between optimizer steps, so model,
    # optimizer and step counter stay consistent and the checkpoint written on the way out resumes exactly.
    with first_signal_as_flag() as interrupted:
        while run.epoch < cfg.epochs:
            if not run.train_epoch(interrupted, tqdm) or run.end_epoch(interrupted):
                break
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"epochs_done": run.epoch, "steps": run.global_step, "best_val_psnr": run.best, "history": run.history,
            "out": str(run.out)}


def _write_metrics(out: Path, history: list[dict]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: ["epoch", "step", "lr", "loss", "val_psnr", "val_ssim"].index(k) if k in ["epoch", "step", "lr", "loss", "val_psnr", "val_ssim"] else 99)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "metrics.json", json.dumps(history, indent=1).encode())
    try:
        _plot_curves(out, history)
    except ImportError:
        pass


def _plot_curves(out: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [r["epoch"] for r in history]
    # Markers: a one-epoch run has one point, which a line alone does not draw.
    ax[0].plot(ep, [r["loss"] for r in history], marker="o", markersize=3)
    ax[0].set(xlabel="epoch", ylabel="train loss (MSE + λ(1-SSIM))")
    vals = [(r["epoch"], r["val_psnr"]) for r in history if "val_psnr" in r]
    if vals:
        ax[1].plot(*zip(*vals), marker="o", markersize=3)
    ax[1].set(xlabel="epoch", ylabel="validation PSNR (dB)")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out / "curves.png", buf.getvalue())
