"""The training loop: config, checkpoints that survive kill -9, exact resume, validation, DDP.

Exact resume without saving iterator state: every epoch's sample order and every sample's crop and
augmentation come from RNGs seeded by ``(seed, epoch, index)``, so a run restarted at
``(epoch, step)`` replays the very same batches.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import atomic_write_bytes
from deepfusionnet.runtime.machine import has_native_bf16
from deepfusionnet.runtime.metrics import psnr, ssim
from deepfusionnet.runtime.processing import crop, pad_to_multiple, to_image, to_tensor
from deepfusionnet.train import data as D
from deepfusionnet.train.losses import PIXEL_LOSSES, hybrid_loss
from deepfusionnet.train.models import create_model, get_spec
from deepfusionnet.train.weights import load_model, save_weights


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
    lr_schedule: str = "constant"  # constant | cosine
    min_lr: float = 1e-6
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
    # "image" (only pairs sharing one normal-light image; the only grouping before session 12).
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

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DFNError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> None:
        get_spec(self.model)
        if self.lr_schedule not in ("constant", "cosine"):
            raise DFNError("--lr-schedule must be constant or cosine")
        if self.crop % 8 or self.crop < 0:
            raise DFNError("--crop must be a multiple of 8 (or 0: whole frames)")
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
        if not 0.0 <= self.ema_decay < 1.0:
            raise DFNError("--ema must be in [0, 1), e.g. 0.999 (0 turns it off)")
        if self.freeze_bn and not self.init:
            raise DFNError("--freeze-bn keeps the BatchNorm statistics of --init; pass --init WEIGHTS with it")
        if not 0.0 < self.targets_mix <= 1.0:
            raise DFNError("--targets-mix must be in (0, 1]: the teacher's share of the training target")
        if self.targets and get_spec(self.model).scale != 1:
            raise DFNError("--targets applies to the enhancer; the SR model's targets are the normal-light images")


# Options that may change between a run and its resumption without changing what is learned. "out": a run
# folder may be moved. "bf16": a run may move to a machine with(out) bf16 hardware; like "threads" it changes
# the arithmetic, not the run, and the checkpoint records which one ran.
_RUN_CONTROL = {"max_steps", "threads", "checkpoint_minutes", "out", "val_every", "bf16"}


def validation_split(pairs: D.PairSet, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """(training, held-out) indices of ``pairs`` for ``cfg``: ``val_seed`` when given, else ``seed``."""
    return D.split_validation(pairs, cfg.val_count, cfg.seed if cfg.val_seed is None else cfg.val_seed,
                              cfg.val_group)


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's share of the epoch's sample order: one permutation per epoch, dealt round-robin."""
    return np.random.default_rng([seed, epoch]).permutation(n)[rank::world]


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
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if not {"model", "optimizer", "epoch", "step", "best", "history", "torch_rng"} <= set(state):
            raise ValueError("entries missing")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DFNError(f"{ckpt_path}: unreadable checkpoint ({first})") from None
    return state


def _atomic_torch_save(obj, path: Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def whole_frame(lo: np.ndarray, hi: np.ndarray, sr: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A pair as the model meets it in use: the SR model gets ``hi`` (cut to even sides) blurred and
    downscaled 2x by ``rng``'s degradation; the enhancer gets ``lo`` as it is."""
    if sr:
        hi = hi[: hi.shape[0] // 2 * 2, : hi.shape[1] // 2 * 2]
        lo = D.degrade_for_sr(hi, rng)
    return lo, hi


def evaluate_model(model: torch.nn.Module, pairs: D.PairSet, multiple: int, scale: int = 1, sr: bool = False) -> dict:
    """Full-resolution PSNR/SSIM on uint8 outputs, with the runtime's padding (as `dfn eval` does)."""
    model.eval()
    ps, ss = [], []
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for lo, hi in zip(pairs.low, pairs.high):
            lo, hi = whole_frame(lo, hi, sr, rng)
            x, size = pad_to_multiple(to_tensor(lo), multiple)
            y = crop(model(torch.from_numpy(x)).numpy(), size, scale)
            out = to_image(y)
            ps.append(psnr(out, hi))
            ss.append(ssim(out, hi))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


BN_REFRESH_FRAMES = 64
BN_REFRESH_MAX_SIDE = 1024  # larger frames contribute their centre, the size of one runtime tile


def training_sample(trainset: D.PairSet, i: int, rng: np.random.Generator, cfg: TrainConfig,
                    sr: bool) -> tuple[np.ndarray, np.ndarray]:
    """One augmented ``(input, target)`` crop of pair ``i``, as the run's model is trained on."""
    if sr:
        return D.sr_sample(trainset, i, rng, cfg.crop)
    return D.enhancement_sample(trainset, i, rng, cfg.crop, cfg.synthetic_prob)


def refresh_batchnorm(model: torch.nn.Module, trainset: D.PairSet, cfg: TrainConfig, sr: bool,
                      multiple: int) -> None:
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

    count = min(BN_REFRESH_FRAMES, len(trainset))
    rng = np.random.default_rng([cfg.seed, 0x5EED])  # SR: one fixed degradation per frame

    def centre(img: np.ndarray, limit: int) -> np.ndarray:
        # Bounded memory on big photos; the runtime tiles such frames at --tile 1024 anyway.
        h, w = img.shape[:2]
        y, x = max(0, (h - limit) // 2), max(0, (w - limit) // 2)
        return img[y:y + limit, x:x + limit]

    limit = BN_REFRESH_MAX_SIDE * (2 if sr else 1)  # SR: the input is the high frame halved

    def frames():  # one at a time: only the current frame is in memory
        for i in np.linspace(0, len(trainset) - 1, count).round().astype(int):
            lo, _ = whole_frame(centre(trainset.low[i], limit), centre(trainset.high[i], limit), sr, rng)
            yield torch.from_numpy(pad_to_multiple(to_tensor(lo), multiple)[0])

    with torch.no_grad():
        update_bn(frames(), model)


@contextlib.contextmanager
def deferred_interrupt():
    """Turn the first Ctrl-C / SIGTERM into a flag the loop checks between steps (a second one stops at once).

    Stopping between optimizer steps keeps model, optimizer and step counter consistent, so the checkpoint
    written on the way out resumes exactly.
    """
    flag = {"signal": None}

    def handler(signum, _frame):
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signum

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train according to ``cfg``; returns the final metrics. Only rank 0 writes files."""
    from tqdm import tqdm

    cfg.validate()
    rank, world = _dist()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    spec = get_spec(cfg.model)
    sr = spec.scale == 2
    # Before the data: a resumed run's options decide its split, so a changed one is named first.
    state = _load_checkpoint(out, cfg) if resume else None
    if not resume and ckpt_path.exists():  # checked on every rank, so no rank starts while another refuses
        raise DFNError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")

    pairs = D.load_pairs(cfg.data)
    train_idx, val_idx = validation_split(pairs, cfg)
    if len(train_idx) == 0:
        raise DFNError(f"{cfg.data}: no training pairs left after holding out {cfg.val_count} for validation")
    val = pairs.subset(val_idx)
    trainset = pairs.subset(train_idx)
    if cfg.targets:
        trainset = D.with_targets(trainset, cfg.targets, cfg.targets_mix)
    # Refuse now, not at the first sample; SR crops the normal-light image at 2x the LR crop.
    D.check_crop_fits(trainset.high if sr else trainset.low, cfg.crop * (2 if sr else 1))
    if cfg.crop == 0 and cfg.batch_size > 1:
        sizes = {D.whole_frame_size(img) for img in trainset.low}
        if len(sizes) > 1:
            raise DFNError(f"{cfg.data}: --crop 0 batches whole frames, which come in {len(sizes)} sizes here "
                           f"({', '.join(f'{w}x{h}' for h, w in sorted(sizes)[:3])}...); use --batch-size 1")

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model)
    if cfg.init and not resume:
        from deepfusionnet.runtime.artifacts import resolve

        init_path = resolve(cfg.init, "weights").path  # a shipped name or a file
        init_model, init_name = load_model(init_path, name=cfg.model)
        if init_name != cfg.model:  # SR weights from before the skip load as the paper's block
            raise DFNError(f"{init_path}: holds {init_name} weights; train them on with --model {init_name}")
        model.load_state_dict(init_model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # Weights only: BatchNorm statistics are re-estimated for the averaged weights (see refresh_batchnorm).
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
    kept = ema.module if ema is not None else model  # what is validated and saved as weights
    steps_per_epoch = max(1, len(trainset) // (cfg.batch_size * world))
    total_steps = steps_per_epoch * cfg.epochs

    def lr_at(step: int) -> float:
        if cfg.lr_schedule == "constant":
            return cfg.lr
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    epoch, step_in_epoch, best, history, losses = 0, 0, -1.0, [], []
    if state is not None:
        if state.get("world", 1) != world:  # the data shards, and so the batches, depend on it
            raise DFNError(f"{out}: the run was started with {state.get('world', 1)} process(es), resumed with "
                           f"{world}; resume with the same torchrun --nproc_per_node")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            if "ema" not in state:
                raise DFNError(f"{ckpt_path}: the checkpoint holds no weight average to resume --ema with")
            ema.load_state_dict(state["ema"])
        epoch, step_in_epoch, best = state["epoch"], state["step"], state["best"]
        history = state["history"]
        losses = list(state.get("epoch_losses", []))
        torch.set_rng_state(state["torch_rng"])
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2).encode())
    if rank == 0:
        for stale in out.glob(".*.part"):  # temporaries of a write cut short by kill -9
            stale.unlink(missing_ok=True)

    bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and has_native_bf16())
    if rank == 0:  # only once the inputs are known good: a bad run fails with its one error line
        arithmetic = {True: "bf16 autocast", False: "fp32"}
        print(f"training with {arithmetic[bf16]} on the CPU (--bf16 {cfg.bf16})", file=sys.stderr, flush=True)
        trained_with = state.get("autocast") if state is not None else None
        if trained_with is not None and trained_with != bf16:
            print(f"note: the run trained with {arithmetic[trained_with]} until now and goes on with "
                  f"{arithmetic[bf16]}; --bf16 {'on' if trained_with else 'off'} would keep it",
                  file=sys.stderr, flush=True)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)

    def checkpoint(ep: int, st: int, epoch_losses: list[float]) -> None:
        if rank != 0:
            return
        _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": ep, "step": st,
                            "best": best, "history": history, "torch_rng": torch.get_rng_state(),
                            "epoch_losses": list(epoch_losses), "world": world, "autocast": bf16,
                            **({"ema": ema.state_dict()} if ema is not None else {})}, ckpt_path)

    last_ckpt = time.monotonic()
    global_step = epoch * steps_per_epoch + step_in_epoch

    def averaged() -> torch.nn.Module:
        """``kept``, ready to validate or save: an average gets statistics of its own (frozen ones stay)."""
        if ema is not None and not cfg.freeze_bn:
            refresh_batchnorm(kept, trainset, cfg, sr, spec.multiple)
        return kept

    def stop_if_interrupted(flag: dict) -> None:
        if flag["signal"] is None:
            return
        checkpoint(epoch, step_in_epoch, losses)
        if rank == 0:
            # Said before last.safetensors: with --ema that re-estimates BatchNorm first, which takes a while.
            print(f"checkpoint saved at epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch}; "
                  "run the same command with --resume to continue (writing last.safetensors)",
                  file=sys.stderr, flush=True)
            save_weights(averaged(), cfg.model, out / "last.safetensors", {"epoch": epoch, "step": global_step})
        raise KeyboardInterrupt

    with deferred_interrupt() as interrupted:
        while epoch < cfg.epochs:
            order = epoch_order(len(trainset), cfg.seed, epoch, rank, world)
            net.train()
            if cfg.freeze_bn:
                freeze_batchnorm(model)
            bar = tqdm(range(step_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                       disable=rank != 0 or not sys.stderr.isatty() and os.environ.get("DFN_PROGRESS") != "1",
                       initial=step_in_epoch, total=steps_per_epoch)
            for step in bar:
                xs, ys = [], []
                for j in range(cfg.batch_size):
                    i = int(order[(step * cfg.batch_size + j) % len(order)])
                    rng = np.random.default_rng([cfg.seed, epoch, step, j, rank])
                    x, y = training_sample(trainset, i, rng, cfg, sr)
                    xs.append(x)
                    ys.append(y)
                x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
                for g in opt.param_groups:
                    g["lr"] = lr_at(global_step)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    pred = net(x)
                loss, parts = hybrid_loss(pred, y, cfg.ssim_weight, cfg.pixel_loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                global_step += 1
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", best_val_psnr=f"{best:.2f}")
                step_in_epoch = step + 1
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    checkpoint(epoch, step_in_epoch, losses)
                    last_ckpt = time.monotonic()
                stop_if_interrupted(interrupted)
                if cfg.max_steps and global_step >= cfg.max_steps:
                    break
            if step_in_epoch < steps_per_epoch:  # stopped by --max-steps inside an epoch
                checkpoint(epoch, step_in_epoch, losses)
                if rank == 0:
                    save_weights(averaged(), cfg.model, out / "last.safetensors", {"epoch": epoch, "step": global_step})
                break
            epoch += 1
            step_in_epoch = 0
            row = {"epoch": epoch, "step": global_step, "lr": lr_at(global_step), "loss": float(np.mean(losses)) if losses else float("nan")}
            # The BatchNorm refresh and last.safetensors wait for a validated epoch; an interrupt or the
            # last epoch writes them anyway (stop_if_interrupted, and the last epoch always validates).
            validate_now = epoch % cfg.val_every == 0 or epoch == cfg.epochs or not len(val)
            if rank == 0 and validate_now:
                averaged()
                if len(val):
                    m = evaluate_model(kept, val, spec.multiple, spec.scale, sr)
                    row.update(val_psnr=m["psnr"], val_ssim=m["ssim"])
                    if m["psnr"] > best:
                        best = m["psnr"]
                        save_weights(kept, cfg.model, out / "best.safetensors",
                                     {"epoch": epoch, "val_psnr": f"{best:.3f}"})
                save_weights(kept, cfg.model, out / "last.safetensors", {"epoch": epoch})
            if rank == 0:
                history.append(row)
                _write_metrics(out, history)
                print(json.dumps(row), file=sys.stderr, flush=True)
            losses = []
            checkpoint(epoch, 0, losses)
            last_ckpt = time.monotonic()
            stop_if_interrupted(interrupted)
            if cfg.max_steps and global_step >= cfg.max_steps:
                if rank == 0 and not validate_now:
                    save_weights(averaged(), cfg.model, out / "last.safetensors", {"epoch": epoch})
                break
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"epochs_done": epoch, "steps": global_step, "best_val_psnr": best, "history": history, "out": str(out)}


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
    ax[0].plot(ep, [r["loss"] for r in history])
    ax[0].set(xlabel="epoch", ylabel="train loss (MSE + λ(1-SSIM))")
    vals = [(r["epoch"], r["val_psnr"]) for r in history if "val_psnr" in r]
    if vals:
        ax[1].plot(*zip(*vals), marker=".")
    ax[1].set(xlabel="epoch", ylabel="validation PSNR (dB)")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out / "curves.png", buf.getvalue())
