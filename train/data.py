"""Paired low/normal-light data: folder layouts, validation split, crops and augmentations, SR pairs,
and the sample stream that DataLoader workers cut for each process of a run.

Images are read through the runtime's reader, so training sees frames exactly as the device does.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.measure.evaluate import degrade_for_sr, halve_low  # shared with dfn eval
from deepfusionnet.runtime.images import IMAGE_SUFFIXES, read_image
from deepfusionnet.runtime.measure.pairs import find_pairs  # torch-free, shared with dfn eval
from deepfusionnet.train.synthetic import darken


@dataclass
class PairSet:
    """Decoded pairs held in memory (uint8 RGB); LOL-v1's 286 train pairs take about 400 MB."""

    low: list[np.ndarray]
    high: list[np.ndarray]
    names: list[str]
    root: str = ""  # the folder they came from, for messages

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: list[int]) -> "PairSet":
        return PairSet([self.low[i] for i in idx], [self.high[i] for i in idx], [self.names[i] for i in idx],
                       self.root)


def load_pairs(root: str | Path) -> PairSet:
    low, high, names = [], [], []
    for lp, hp in find_pairs(root):
        lo, hi = read_image(lp), read_image(hp)
        if lo.shape != hi.shape:
            raise DFNError(f"{lp}: size {lo.shape[1]}x{lo.shape[0]} differs from its pair {hp} ({hi.shape[1]}x{hi.shape[0]})")
        low.append(lo)
        high.append(hi)
        names.append(lp.name)
    return PairSet(low, high, names, str(root))


def with_targets(pairs: PairSet, folder: str | Path, mix: float = 1.0) -> PairSet:
    """``pairs`` with each ``high`` replaced by ``(1 - mix) * high + mix * target``, the target read from
    ``folder`` under the low image's name (any image suffix): soft targets for distillation, e.g. a
    slower teacher's outputs (``dfn enhance --tta`` over the training ``low/`` folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DFNError(f"{folder}: --targets is not a folder")
    by_stem = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    high = []
    for name, hi in zip(pairs.names, pairs.high):
        path = by_stem.get(Path(name).stem)
        if path is None:
            raise DFNError(f"{folder}: no target for training frame {name}")
        t = read_image(path)
        if t.shape != hi.shape:
            raise DFNError(f"{path}: size {t.shape[1]}x{t.shape[0]} differs from its training frame "
                           f"{name} ({hi.shape[1]}x{hi.shape[0]})")
        if mix < 1.0:
            t = np.rint((1.0 - mix) * hi.astype(np.float32) + mix * t.astype(np.float32)).astype(np.uint8)
        high.append(t)
    return PairSet(list(pairs.low), high, list(pairs.names), pairs.root)


VAL_GROUPS = ("scene", "image")
# Normal-light images whose 60x40 grey thumbnails (mean removed) correlate above this are one view of
# one scene. On LOL-v1's train pairs the same view re-shot (other exposure, an object moved) scores
# 0.95-1.0 and rearranged still lifes 0.8-0.9; different rooms stay below 0.72.
SAME_SCENE_CORRELATION = 0.9


def _thumbnail(img: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    t = cv2.resize(grey, (60, 40), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-9)


def scene_labels(images: list[np.ndarray], threshold: float = SAME_SCENE_CORRELATION) -> np.ndarray:
    """One label per image: images linked by a chain of look-alikes (thumbnail correlation above
    ``threshold``) share the label of the chain's first image."""
    thumbs = np.stack([_thumbnail(im) for im in images])
    alike = thumbs @ thumbs.T > threshold
    labels = np.full(len(images), -1)
    for i in range(len(images)):
        if labels[i] >= 0:
            continue
        labels[i], frontier = i, [i]
        while frontier:
            new = np.flatnonzero(alike[frontier.pop()] & (labels < 0))
            labels[new] = i
            frontier.extend(new.tolist())
    return labels


def split_validation(pairs: PairSet, count: int, seed: int = 0, group: str = "scene") -> tuple[list[int], list[int]]:
    """(training, held-out) indices, about ``count`` pairs held out whole scenes at a time, so that no
    held-out scene is seen in training. ``group="image"`` keeps together only pairs that share one
    normal-light image (byte for byte); ``"scene"`` also pairs whose normal-light images show the same
    view (LOL re-shoots scenes: 18 of the 40 pairs held out by image had one in training)."""
    if group not in VAL_GROUPS:
        raise DFNError(f"--val-group must be one of {', '.join(VAL_GROUPS)}")
    if count <= 0:
        return list(range(len(pairs))), []
    digests = [hashlib.sha1(hi.tobytes()).hexdigest() for hi in pairs.high]
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        groups.setdefault(d, []).append(i)
    if group == "scene":  # merge image groups by scene; a scene is named by its smallest image digest
        labels = scene_labels(pairs.high)
        by_label: dict[int, list[int]] = {}
        for members in groups.values():
            by_label.setdefault(int(labels[members[0]]), []).extend(members)
        groups = {min(digests[i] for i in m): sorted(m) for m in by_label.values()}
    keys = sorted(groups)
    np.random.default_rng(seed).shuffle(keys)
    val: list[int] = []
    for k in keys:
        if len(val) >= count:
            break
        val.extend(groups[k])
    if group == "scene" and len(val) > len(pairs) // 2:
        raise DFNError(f"{pairs.root or 'pairs'}: holding out {count} pairs by scene takes {len(val)} of {len(pairs)}: "
                       "most frames show one view (a fixed camera?); use --val-group image or a smaller --val-count")
    vs = set(val)
    return [i for i in range(len(pairs)) if i not in vs], sorted(val)


def augment(rng: np.random.Generator, *arrays: np.ndarray, keep_shape: bool = False) -> list[np.ndarray]:
    """The same random flip / 90-degree rotation applied to every array (HWC); ``keep_shape``: only
    the rotations that keep a non-square frame's shape (0 or 180 degrees)."""
    k = 2 * int(rng.integers(2)) if keep_shape else int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k)
        if flip:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def check_crop_fits(images: list[np.ndarray], size: int) -> None:
    """Raise the one-line error for the first image that a ``size`` crop does not fit."""
    for img in images:
        h, w = img.shape[:2]
        if h < size or w < size:
            raise DFNError(f"crop {size} is larger than an image of {w}x{h}")


def random_crop(rng: np.random.Generator, size: int, *arrays: np.ndarray, scales: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Aligned random crops: ``arrays[i]`` is cropped at ``size * scales[i]`` (default 1)."""
    check_crop_fits(arrays[:1], size)
    h, w = arrays[0].shape[:2]
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    scales = scales or (1,) * len(arrays)
    return [a[y * s:(y + size) * s, x * s:(x + size) * s] for a, s in zip(arrays, scales)]


# Whole-frame samples are cut to a multiple of this, which every model here accepts.
WHOLE_FRAME_MULTIPLE = 16


def whole_frame_size(img: np.ndarray) -> tuple[int, int]:
    """``(H, W)`` of the whole-frame training sample of ``img``: its size cut to the multiple."""
    m = WHOLE_FRAME_MULTIPLE
    return img.shape[0] // m * m, img.shape[1] // m * m


def enhancement_sample(pairs: PairSet, i: int, rng: np.random.Generator, crop: int, synthetic_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One ``(low, high)`` training crop as float32 CHW in [0, 1]; ``crop`` 0: the whole frame (cut to
    a multiple of 16, flipped or turned 180 degrees), so the network learns from the frame it will see."""
    if crop:
        lo, hi = random_crop(rng, crop, pairs.low[i], pairs.high[i])
    else:
        h, w = whole_frame_size(pairs.low[i])
        lo, hi = pairs.low[i][:h, :w], pairs.high[i][:h, :w]
    if synthetic_prob > 0 and rng.random() < synthetic_prob:
        lo = darken(hi, rng)
    lo, hi = augment(rng, lo, hi, keep_shape=not crop)
    return _chw(lo), _chw(hi)


def sr_sample(pairs: PairSet, i: int, rng: np.random.Generator, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(lr, hr)`` SR crop from a normal-light image: LR ``crop``, HR ``2 * crop``."""
    (hr,) = random_crop(rng, crop * 2, pairs.high[i])
    (hr,) = augment(rng, hr)
    return _chw(degrade_for_sr(hr, rng)), _chw(hr)


def enhance_sr_sample(pairs: PairSet, i: int, rng: np.random.Generator, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """One enhance-and-upscale crop (NEID): the same ``2 * crop`` window of the low and the high image;
    the input is the low window halved (bicubic, as ``dfn eval`` halves whole frames), the target the high."""
    lo, hi = random_crop(rng, crop * 2, pairs.low[i], pairs.high[i])
    lo, hi = augment(rng, lo, hi)
    return _chw(halve_low(lo)), _chw(hi)


def _chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) * np.float32(1 / 255)


# ---------------------------------------------------------------------------------------------------
# The sample stream: what every step of a run trains on, whatever the number of processes


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n`` training pairs."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class SampleStream(torch.utils.data.Dataset):
    """The run's training samples, keyed by ``(epoch, position)``: position ``p`` of an epoch is pair
    ``permutation[p % n]``, cropped and augmented by an RNG seeded with ``(seed, epoch, step, k)``
    (step, k = divmod(p, global_batch)). Nothing depends on the process or worker that cuts a sample,
    so a run replays the same global batches on any number of processes, with or without workers,
    and resumes at any step."""

    pairs: PairSet
    seed: int
    global_batch: int
    crop: int
    task: str = "enhance"  # runtime.artifacts.TASKS
    synthetic_prob: float = 0.0
    _order: tuple[int, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:  # computed once per epoch in each worker
            self._order = (epoch, epoch_permutation(len(self.pairs), self.seed, epoch))
        return self._order[1]

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, position = key
        step, k = divmod(position, self.global_batch)
        i = int(self.permutation(epoch)[position % len(self.pairs)])
        # The trailing 0 was the rank when each process drew its own samples: single-process runs kept
        # their exact stream (and their checkpoints an exact resume) across that change.
        rng = np.random.default_rng([self.seed, epoch, step, k, 0])
        if self.task == "sr":
            return sr_sample(self.pairs, i, rng, self.crop)
        if self.task == "enhance-sr":
            return enhance_sr_sample(self.pairs, i, rng, self.crop)
        return enhancement_sample(self.pairs, i, rng, self.crop, self.synthetic_prob)


class ShardSampler(torch.utils.data.Sampler):
    """This process's share of every global batch from ``start_step`` of the epoch set by :meth:`set_epoch`.

    Like ``DistributedSampler`` it deals positions round-robin (process ``rank`` of ``world`` takes
    positions ``rank, rank + world, ...`` of each global batch), but over positions of the run's sample
    stream rather than dataset indices, so a run can start mid-epoch and the global batch at a step is
    the same set of samples on any number of processes.
    """

    def __init__(self, steps_per_epoch: int, global_batch: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise DFNError(f"--batch-size {global_batch} (the global batch) does not split evenly over "
                           f"{world} processes; use a multiple of {world}")
        self.steps_per_epoch, self.global_batch = steps_per_epoch, global_batch
        self.rank, self.world = rank, world
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        for step in range(self.start_step, self.steps_per_epoch):
            for k in range(self.rank, self.global_batch, self.world):
                yield self.epoch, step * self.global_batch + k

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * (self.global_batch // self.world)


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the trainer stops between steps and shuts the workers
    # down itself, so a worker must not die under a batch the loop is still waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One thread each: the workers are the parallelism, and the training process keeps its cores.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(stream: SampleStream, sampler: ShardSampler, workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``(input, target)`` for this process: ``workers`` processes crop and augment ahead of
    the loop (pinned memory when it feeds a GPU); 0 cuts them in the loop. The same batches either way."""
    return torch.utils.data.DataLoader(
        stream, batch_size=sampler.global_batch // sampler.world, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
        worker_init_fn=_worker_init if workers else None,
        # Spawned, not forked: a fork copies OpenCV's and OpenMP's thread pools mid-state, and the child
        # then deadlocks on their locks (seen in the test suite: a worker stuck in cv2.setNumThreads).
        multiprocessing_context="spawn" if workers else None,
        # Its own generator: the loader would otherwise draw worker seeds from torch's global RNG.
        generator=torch.Generator().manual_seed(stream.seed))
