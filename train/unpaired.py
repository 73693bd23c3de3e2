"""Unpaired training (``dfn train --unpaired``): CycleGAN, for models registered with a discriminator.

Two generators of the model (G: low -> normal light, F: normal -> low), two PatchGAN discriminators, the
reference recipe of ``junyanz/pytorch-CycleGAN-and-pix2pix`` (``models/cycle_gan_model.py``): LSGAN
(mean squared error to 1 and 0), cycle loss x10, identity loss x5, a history pool of 50 fakes per
direction for the discriminators, Adam (0.5, 0.999) with one optimizer for both generators and one for
both discriminators, the learning rate constant for the first half of the epochs and then falling
linearly to zero, N(0, 0.02) initialisation.

The two domains are the low- and the normal-light images of the training pairs, each drawn on its own
(the pairing is never used), plus ``--unpaired-extra DIR``: more low-light photos without ground truth
(e.g. DICM/LIME night photos), shrunk to at most 600 px on their long side like LOL's frames. Validation
is paired, as for every model: G's PSNR on the held-out pairs of the same split, which picks
``best.safetensors``. Checkpoints hold all four networks, both optimizers and the pools, so ``--resume``
continues where the run stopped.

Generators here map [0, 1] to [0, 1] (the [-1, 1] of the reference lives inside the model); the
discriminators see [-1, 1], and the L1 terms are doubled so that every loss has the reference's scale.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import IMAGE_SUFFIXES, atomic_write_bytes, read_image
from deepfusionnet.runtime.signals import first_signal_as_flag
from deepfusionnet.train import data as D
from deepfusionnet.train import device as dev
from deepfusionnet.train.models import create_model, get_spec
from deepfusionnet.train.weights import save_weights

LAMBDA_CYCLE = 10.0
LAMBDA_IDENTITY = 0.5 * LAMBDA_CYCLE
POOL_SIZE = 50
EXTRA_MAX_SIDE = 600
L1_SCALE = 2.0  # |a - b| in [-1, 1] units, for outputs compared in [0, 1]


def read_folder(folder: str | Path, max_side: int = EXTRA_MAX_SIDE) -> list[np.ndarray]:
    """Every image under ``folder`` (recursively), shrunk so its long side is at most ``max_side``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DFNError(f"{folder}: --unpaired-extra is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DFNError(f"{folder}: --unpaired-extra holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = []
    for p in paths:
        img = read_image(p)
        f = max_side / max(img.shape[:2])
        if f < 1:
            size = (round(img.shape[1] * f), round(img.shape[0] * f))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        out.append(img)
    return out


@dataclass
class Domains:
    """Domain A (low light) and domain B (normal light): two independent piles of uint8 RGB images."""

    low: list[np.ndarray]
    high: list[np.ndarray]

    def batch(self, rng: np.random.Generator, crop: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` random crops from each domain, each with a random horizontal flip: float NCHW [0, 1]."""
        def one(pile: list[np.ndarray]) -> np.ndarray:
            (img,) = D.random_crop(rng, crop, pile[int(rng.integers(len(pile)))])
            return img[:, ::-1] if rng.integers(2) else img

        def stack(pile: list[np.ndarray]) -> torch.Tensor:
            arr = np.stack([one(pile) for _ in range(size)]).transpose(0, 3, 1, 2)
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / 255.0)

        return stack(self.low), stack(self.high)


@dataclass
class ImagePool:
    """The reference's history of generated images: a full pool answers half the queries with an older fake
    (and keeps the new one in its place), so the discriminator does not chase the latest generator only."""

    size: int = POOL_SIZE
    images: list[torch.Tensor] = field(default_factory=list)

    def query(self, fakes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        out = []
        for img in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(img.cpu())
                out.append(img)
            elif rng.random() < 0.5:
                k = int(rng.integers(self.size))
                out.append(self.images[k].to(img.device))
                self.images[k] = img.cpu()
            else:
                out.append(img)
        return torch.stack(out)


@dataclass
class Nets:
    g: nn.Module  # low -> normal: the model that is saved and shipped
    f: nn.Module  # normal -> low
    d_low: nn.Module  # tells real low-light images from F's
    d_high: nn.Module  # tells real normal-light images from G's

    def generators(self) -> list[nn.Parameter]:
        return [*self.g.parameters(), *self.f.parameters()]

    def discriminators(self) -> list[nn.Parameter]:
        return [*self.d_low.parameters(), *self.d_high.parameters()]

    def modules(self) -> dict[str, nn.Module]:
        return {"g": self.g, "f": self.f, "d_low": self.d_low, "d_high": self.d_high}


def init_normal(module: nn.Module) -> None:
    """N(0, 0.02) convolution weights, zero biases (the reference's ``init_type normal``)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_nets(name: str, device: torch.device) -> Nets:
    spec = get_spec(name)
    if spec.discriminator is None:
        raise DFNError(f"--unpaired trains a CycleGAN and needs a model registered with a discriminator; "
                       f"{name} has none")
    nets = Nets(create_model(name), create_model(name), spec.discriminator(), spec.discriminator())
    for m in nets.modules().values():
        init_normal(m)
        m.to(device)
    return nets


def _lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    return torch.mean((prediction - float(real)) ** 2)


def _signed(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 - 1.0


def generator_loss(nets: Nets, a: torch.Tensor, b: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, G(a), F(b)): adversarial terms of both directions + cycle + identity."""
    fake_b, fake_a = nets.g(a), nets.f(b)
    cycle = (nets.f(fake_b) - a).abs().mean() + (nets.g(fake_a) - b).abs().mean()
    identity = (nets.g(b) - b).abs().mean() + (nets.f(a) - a).abs().mean()
    adversarial = _lsgan(nets.d_high(_signed(fake_b)), True) + _lsgan(nets.d_low(_signed(fake_a)), True)
    loss = adversarial + L1_SCALE * (LAMBDA_CYCLE * cycle + LAMBDA_IDENTITY * identity)
    return loss, fake_b, fake_a


def discriminator_loss(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (_lsgan(d(_signed(real)), True) + _lsgan(d(_signed(fake.detach())), False))


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0  # within the epoch
    best: float = -1.0
    history: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # the generators' loss at each step of this epoch
    pools: tuple[ImagePool, ImagePool] = field(default_factory=lambda: (ImagePool(), ImagePool()))


def train_step(nets: Nets, opt_g, opt_d, state: RunState, a: torch.Tensor, b: torch.Tensor,
               rng: np.random.Generator) -> tuple[float, float]:
    """One optimizer step of the generators, then one of the discriminators (reference order)."""
    for d in (nets.d_low, nets.d_high):
        d.requires_grad_(False)
    loss_g, fake_b, fake_a = generator_loss(nets, a, b)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    for d in (nets.d_low, nets.d_high):
        d.requires_grad_(True)
    pool_a, pool_b = state.pools
    loss_d = (discriminator_loss(nets.d_high, b, pool_b.query(fake_b, rng))
              + discriminator_loss(nets.d_low, a, pool_a.query(fake_a, rng)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    return float(loss_g), float(loss_d)


def lr_factor(epoch: int, epochs: int) -> float:
    """Constant for the first half of the epochs, then linearly to zero (reference: 100 + 100)."""
    keep = epochs // 2
    return 1.0 - max(0, epoch - keep) / float(epochs - keep + 1)


def _checkpoint(path: Path, nets: Nets, opt_g, opt_d, state: RunState) -> None:
    from deepfusionnet.train.trainer import _atomic_torch_save, on_cpu

    _atomic_torch_save(on_cpu({
        **{f"net_{k}": m.state_dict() for k, m in nets.modules().items()},
        # "model" and "optimizer" as every dfn checkpoint names them, so --resume checks it alike
        "model": nets.g.state_dict(), "optimizer": opt_g.state_dict(), "optimizer_d": opt_d.state_dict(),
        "epoch": state.epoch, "step": state.step, "best": state.best, "history": state.history,
        "torch_rng": torch.get_rng_state(), "pools": [p.images for p in state.pools], "losses": state.losses,
        "unpaired": True}), path)


def _restore(ckpt: dict, nets: Nets, opt_g, opt_d) -> RunState:
    if not ckpt.get("unpaired"):
        raise DFNError("the checkpoint is from a paired run; resume it without --unpaired")
    for k, m in nets.modules().items():
        m.load_state_dict(ckpt[f"net_{k}"])
    opt_g.load_state_dict(ckpt["optimizer"])
    opt_d.load_state_dict(ckpt["optimizer_d"])
    torch.set_rng_state(ckpt["torch_rng"])
    pools = tuple(ImagePool(images=list(p)) for p in ckpt["pools"])
    return RunState(ckpt["epoch"], ckpt["step"], ckpt["best"], ckpt["history"], list(ckpt["losses"]), pools)


def _validate(cfg, nets: Nets, state: RunState, val: D.PairSet, out: Path, device: torch.device) -> dict:
    """Paired validation of G at the end of an epoch; writes best/last weights and the metrics file."""
    from deepfusionnet.train.trainer import _write_metrics, evaluate_model

    spec = get_spec(cfg.model)
    row: dict = {"epoch": state.epoch, "step": state.epoch * len(state.losses),
                 "lr": cfg.lr * lr_factor(state.epoch - 1, cfg.epochs),  # the epoch just trained
                 "loss": float(np.mean(state.losses)) if state.losses else float("nan")}
    if len(val):
        m = evaluate_model(nets.g, val, spec.multiple, 1, spec.task, device)
        row.update(val_psnr=m["psnr"], val_ssim=m["ssim"])
        if m["psnr"] > state.best:
            state.best = m["psnr"]
            save_weights(nets.g, cfg.model, out / "best.safetensors",
                         {"epoch": state.epoch, "val_psnr": f"{state.best:.3f}", "training": "unpaired"})
    nets.g.train()
    save_weights(nets.g, cfg.model, out / "last.safetensors", {"epoch": state.epoch, "training": "unpaired"})
    state.history.append(row)
    _write_metrics(out, state.history)
    return row


def _prepare(cfg, resume: bool):
    """Data, networks, optimizers and the run state, fresh or from the checkpoint."""
    from deepfusionnet.train.trainer import _load_checkpoint, validation_split

    out = Path(cfg.out)
    if not resume and (out / "checkpoint.pt").exists():
        raise DFNError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    ckpt = _load_checkpoint(out, cfg) if resume else None
    device = dev.resolve_device(cfg.device, dev.probe())
    pairs = D.load_pairs(cfg.data)
    train_idx, val_idx = validation_split(pairs, cfg)
    trainset = pairs.subset(train_idx)
    domains = Domains(list(trainset.low) + (read_folder(cfg.unpaired_extra) if cfg.unpaired_extra else []),
                      list(trainset.high))
    D.check_crop_fits(domains.low + domains.high, cfg.crop)
    torch.manual_seed(cfg.seed)
    nets = build_nets(cfg.model, device)
    opt_g = torch.optim.Adam(nets.generators(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(nets.discriminators(), lr=cfg.lr, betas=(0.5, 0.999))
    if ckpt is not None:
        state = _restore(ckpt, nets, opt_g, opt_d)
    else:
        state = RunState()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2).encode())
    return out, device, domains, pairs.subset(val_idx), nets, opt_g, opt_d, state


@dataclass
class _Run:
    """One unpaired run's parts and its steps: a step, the checks after it, an epoch."""

    cfg: Any
    out: Path
    device: torch.device
    domains: Domains
    val: D.PairSet
    nets: Nets
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    state: RunState
    steps: int  # per epoch
    last_ckpt: float = field(default_factory=time.monotonic)

    @property
    def global_step(self) -> int:
        return self.state.epoch * self.steps + self.state.step

    def checkpoint(self) -> None:
        _checkpoint(self.out / "checkpoint.pt", self.nets, self.opt_g, self.opt_d, self.state)
        self.last_ckpt = time.monotonic()

    def save_last(self) -> None:
        save_weights(self.nets.g, self.cfg.model, self.out / "last.safetensors", {"epoch": self.state.epoch})

    def step(self, progress) -> None:
        cfg, state = self.cfg, self.state
        rng = np.random.default_rng([cfg.seed, state.epoch, state.step])
        a, b = (t.to(self.device) for t in self.domains.batch(rng, cfg.crop, cfg.batch_size))
        loss_g, loss_d = train_step(self.nets, self.opt_g, self.opt_d, state, a, b, rng)
        state.losses.append(loss_g)
        state.step += 1
        if progress.due(self.global_step):
            where = f"epoch {state.epoch + 1}/{cfg.epochs} step {state.step}/{self.steps}"
            print(progress.line(self.global_step, where, loss_g) + f", D loss {loss_d:.4f}",
                  file=sys.stderr, flush=True)

    def after_step(self, interrupted: dict) -> None:
        """A checkpoint every few minutes; after a Ctrl-C, a checkpoint and the weights, then stop."""
        stop = interrupted["signal"] is not None
        if stop or time.monotonic() - self.last_ckpt > self.cfg.checkpoint_minutes * 60:
            self.checkpoint()
        if stop:
            self.save_last()
            print(f"checkpoint saved at epoch {self.state.epoch + 1}, step {self.state.step}/{self.steps}; "
                  "run the same command with --resume to continue", file=sys.stderr, flush=True)
            raise KeyboardInterrupt

    def epoch(self, progress, interrupted: dict) -> None:
        """The rest of the current epoch (up to --max-steps), then its validation and a checkpoint."""
        cfg, state = self.cfg, self.state
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(state.epoch, cfg.epochs)
        for m in self.nets.modules().values():
            m.train()
        while state.step < self.steps:
            self.step(progress)
            self.after_step(interrupted)
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        if state.step >= self.steps:
            state.epoch, state.step = state.epoch + 1, 0
            if state.epoch % cfg.val_every == 0 or state.epoch == cfg.epochs:
                row = _validate(cfg, self.nets, state, self.val, self.out, self.device)
                print(json.dumps(row), file=sys.stderr, flush=True)
            state.losses = []
        self.checkpoint()


def train_unpaired(cfg, resume: bool = False) -> dict:
    """Train ``cfg.model`` as a CycleGAN (see the module docstring); returns the final metrics."""
    from deepfusionnet.train.trainer import ProgressLog

    cfg.validate()
    if cfg.crop < 1:
        raise DFNError("--unpaired trains on crops; give --crop (e.g. 128)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, device, domains, val, nets, opt_g, opt_d, state = _prepare(cfg, resume)
    steps = max(1, len(domains.low) // cfg.batch_size)
    run = _Run(cfg, out, device, domains, val, nets, opt_g, opt_d, state, steps)
    print(f"training {cfg.model} unpaired (CycleGAN) on {device}: {len(domains.low)} low-light and "
          f"{len(domains.high)} normal-light images, {steps} steps per epoch", file=sys.stderr, flush=True)
    progress = ProgressLog(cfg.log_every, cfg.batch_size, run.global_step, cfg.epochs * steps)
    with first_signal_as_flag() as interrupted:
        while state.epoch < cfg.epochs:
            run.epoch(progress, interrupted)
            if cfg.max_steps and run.global_step >= cfg.max_steps:
                run.save_last()
                break
    return {"epochs_done": state.epoch, "steps": run.global_step, "best_val_psnr": state.best,
            "out": str(out)}
