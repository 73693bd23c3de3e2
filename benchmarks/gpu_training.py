"""Training on a CUDA GPU against the CPU, and the shipped weights' outputs on both (#33).

Three measurements, each written to --out as JSON; one that cannot run here says "not measured" with
the reason, never a figure:

1. a short `dfn train --device cuda` run (mixed precision as `--amp` chooses it: bf16 autocast where the
   GPU has bf16), samples per second from its progress lines;
2. the same recipe on the CPU (`--device cpu`, fewer steps), samples per second, and the speed-up;
3. the shipped weights on the torch backend, CPU against CUDA, both FP32: max/mean absolute error and
   PSNR between the two outputs on the sample frames (and on --data's low frames).

    .venv/bin/python benchmarks/gpu_training.py --out benchmarks/results/gpu_training.json
    .venv/bin/python benchmarks/gpu_training.py --data ../shared/data/lol-v1/train --out gpu.json

Needs no network. Without --data it trains on synthetic pairs made on the fly: procedural normal-light
frames darkened by the dark-ISP generator of train/synthetic.py. About 2-3 minutes on one data-centre
GPU with 16 cores; samples/s are those of the training steps alone (each progress interval starts after
the previous epoch's checkpoint and validation, and the first interval, cuDNN's warm-up, is left out).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from portable_paths import portable, portable_tree  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
NOT_MEASURED = "not measured"
RATE = re.compile(r"step (\d+)/\d+: loss ([\d.naninf]+), ([\d.]+) samples/s")


def synthetic_pairs(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``count`` LOL-layout pairs (``low/``, ``high/``): procedural normal-light frames (smooth colour
    fields, rectangles, fine texture) and their darkened versions (train/synthetic.py)."""
    import cv2

    from deepfusionnet.train.synthetic import darken

    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("low", "high"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        field = rng.uniform(30, 230, (4, 6, 3)).astype(np.float32)
        img = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):
            y, x = int(rng.integers(h - 16)), int(rng.integers(w - 16))
            dy, dx = int(rng.integers(8, h // 3)), int(rng.integers(8, w // 3))
            img[y:y + dy, x:x + dx] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
        high = np.clip(img, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "high" / f"{i:04d}.png"), high[..., ::-1])
        cv2.imwrite(str(root / "low" / f"{i:04d}.png"), darken(high, rng)[..., ::-1])
    return root


def cuda_info() -> dict | str:
    """The GPU torch sees, or why there is none."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        return f"{NOT_MEASURED}: no CUDA GPU visible to torch {torch.__version__} ({build})"
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "capability": f"{major}.{minor}", "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def train_run(data: Path, out: Path, device: str, steps: int, args, log_every: int) -> dict:
    """One `dfn train` run of ``steps`` steps; its arithmetic, samples/s per progress interval, wall time."""
    cmd = [sys.executable, "-m", "deepfusionnet.cli", "train", "--data", str(data), "--out", str(out),
           "--device", device, "--amp", args.amp, "--epochs", "100000", "--val-every", "100000",
           "--val-count", "2", "--val-group", "image", "--batch-size", str(args.batch_size),
           "--crop", str(args.crop),
           "--max-steps", str(steps), "--log-every", str(log_every), "--checkpoint-minutes", "100"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"status": f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}"}
    lines = proc.stderr.splitlines()
    first = next((ln for ln in lines if ln.startswith("training with")), "")
    intervals = [(int(m[1]), float(m[2]), float(m[3])) for m in map(RATE.search, lines) if m]
    rates = [r for _, _, r in intervals[1:]]  # the first interval holds the warm-up
    shown = " ".join(cmd[3:]).replace(str(out), "RUN").replace(str(data), "DATA")
    result = {"status": "ok", "command": f"dfn {shown}",
              "arithmetic": first.removeprefix("training with ").strip(), "steps": steps,
              "global_batch": args.batch_size, "crop": args.crop, "wall_s": round(wall, 1),
              "samples_per_s_intervals": [round(r, 2) for r in rates],
              "losses": [round(loss, 4) for _, loss, _ in intervals]}
    if rates:
        result["samples_per_s"] = round(statistics.median(rates), 2)
    else:
        result["samples_per_s"] = f"{NOT_MEASURED}: fewer than two progress intervals (raise --steps)"
    result["finite_loss"] = all(np.isfinite(loss) for _, loss, _ in intervals)
    return result


def output_parity(frames: list[Path]) -> dict:
    """The shipped enhancer on the torch backend, FP32 on the CPU and on CUDA, compared frame by frame."""
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.backends.base import load_backend
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import crop, pad_to_multiple, to_tensor

    path = resolve("deepfusionnet", "weights").path
    cpu, gpu = load_backend("torch", path, device="cpu"), load_backend("torch", path, device="cuda")
    rows = []
    for f in frames:
        x, size = pad_to_multiple(to_tensor(read_image(f)), 8)
        a = crop(cpu.infer({"input": x})["output"], size, 1)
        b = crop(gpu.infer({"input": x})["output"], size, 1)
        mse = float(np.mean((a - b) ** 2))
        rows.append({"frame": portable(f), "max_abs": float(np.abs(a - b).max()),
                     "mean_abs": float(np.abs(a - b).mean()),
                     "psnr_db": "identical" if mse == 0 else float(10 * np.log10(1.0 / mse))})
    finite = [r["psnr_db"] for r in rows if r["psnr_db"] != "identical"]
    return {"weights": portable(path), "precision": "fp32 on both (TF32 off in the torch backend)",
            "frames": rows, "max_abs": max(r["max_abs"] for r in rows),
            "min_psnr_db": min(finite) if finite else "identical"}


def frames_to_compare(data: Path | None, limit: int) -> list[Path]:
    from deepfusionnet.runtime.images import IMAGE_SUFFIXES

    frames = sorted(p for p in (REPO / "samples" / "night").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if data is not None and (data / "low").is_dir():
        frames += sorted(p for p in (data / "low").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    return frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--data", type=Path, default=None,
                    help="LOL-layout pairs (low/, high/); default: synthetic")
    ap.add_argument("--pairs", type=int, default=130, help="synthetic pairs when no --data (default 130)")
    ap.add_argument("--size", default="512x384", help="synthetic frame size WxH (default 512x384)")
    ap.add_argument("--steps", type=int, default=160, help="CUDA training steps (default 160)")
    ap.add_argument("--cpu-steps", type=int, default=12, help="CPU training steps (default 12; 0: skip)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="CUDA arithmetic")
    ap.add_argument("--timeout", type=float, default=240, help="seconds allowed to each training run")
    args = ap.parse_args()

    from deepfusionnet.runtime.measure.machine import machine_info

    gpu = cuda_info()
    result: dict = {"machine": machine_info(), "gpu": gpu, "training": {}, "cpu_vs_cuda_outputs": None}
    with tempfile.TemporaryDirectory(prefix="dfn-gpu-training-") as tmp:
        tmp = Path(tmp)
        if args.data is None:
            from deepfusionnet.runtime.sizes import parse_size

            w, h = parse_size(args.size)
            data = synthetic_pairs(tmp / "pairs", args.pairs, (h, w))
            result["data"] = (f"synthetic: {args.pairs} pairs of {w}x{h} (train/synthetic.py darken), "
                              "made on the fly")
        else:
            data = args.data
            result["data"] = portable(data)
        # One progress line per epoch's steps when it divides them: every interval is training alone.
        pairs = len(list((data / "low").iterdir())) if (data / "low").is_dir() else args.pairs
        per_epoch = max(1, (pairs - 2) // args.batch_size)
        if isinstance(gpu, dict):
            result["training"]["cuda"] = train_run(data, tmp / "cuda", "cuda", args.steps, args,
                                                   min(per_epoch, max(1, args.steps // 8)))
        else:
            result["training"]["cuda"] = gpu
        if args.cpu_steps:
            result["training"]["cpu"] = train_run(data, tmp / "cpu", "cpu", args.cpu_steps, args,
                                                  max(1, args.cpu_steps // 3))
        else:
            result["training"]["cpu"] = f"{NOT_MEASURED}: --cpu-steps 0"
    rates = [r.get("samples_per_s") if isinstance(r, dict) else None for r in
             (result["training"]["cuda"], result["training"]["cpu"])]
    if all(isinstance(r, float) for r in rates):
        result["training"]["cuda_over_cpu"] = round(rates[0] / rates[1], 1)
    else:
        result["training"]["cuda_over_cpu"] = f"{NOT_MEASURED}: needs both rates"
    if isinstance(gpu, dict):
        result["cpu_vs_cuda_outputs"] = output_parity(frames_to_compare(args.data, 8))
    else:
        result["cpu_vs_cuda_outputs"] = gpu
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(portable_tree(result), indent=2, default=str) + "\n")
    summary = {k: v if isinstance(v, str) else v.get("samples_per_s") for k, v in result["training"].items()}
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
