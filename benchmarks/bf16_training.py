"""Does bf16 autocast cost training quality? Two ``dfn train`` runs side by side, FP32 and bf16.

The issue asks for bf16 autocast "where it is faster without hurting quality". Speed was measured
(1.6x on a Zen 5); quality only across sessions: the from-scratch scene-split recipe validated 1.3 dB
higher at matched epochs in FP32 (Zen 3, session 15) than in bf16 (Zen 5, sessions 12-13), see
docs/training.md. This runs the controlled comparison: one recipe, one seed, one split, the two
arithmetics at ``--threads 1`` each, at the same time on the same machine.

    .venv/bin/python benchmarks/bf16_training.py               # 12 epochs: about an hour on 2 Zen 5 cores
    .venv/bin/python benchmarks/bf16_training.py --epochs 24 --seed 1

Writes benchmarks/results/bf16_training.{json,md,png}; the runs live in --runs (default
runs/bf16-ab/seed<N>/{fp32,bf16}) and resume when the script is started again. Needs a CPU with bf16
hardware (AVX512-BF16, AMX, Arm BF16): elsewhere PyTorch emulates bf16 about 80x slower than FP32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from portable_paths import portable  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lol-v1" / "train"
# The from-scratch recipe of stages 16 and 18 (docs/training.md), held out by scene.
RECIPE = ["--lr", "5e-4", "--lr-schedule", "cosine", "--batch-size", "4", "--crop", "256", "--ema", "0.995",
          "--val-count", "40", "--val-seed", "0", "--val-group", "scene", "--threads", "1"]
ARMS = {"fp32": "off", "bf16": "on"}


def train_command(data: Path, out: Path, epochs: int, seed: int, val_every: int, bf16: str) -> list[str]:
    cmd = [sys.executable, "-m", "deepfusionnet.cli", "train", "--data", str(data), "--out", str(out),
           "--epochs", str(epochs), "--seed", str(seed), "--val-every", str(val_every), "--bf16", bf16,
           *RECIPE]
    return cmd + (["--resume"] if (out / "checkpoint.pt").exists() else [])


def validated(out: Path) -> list[dict]:
    """The run's validated epochs, from its metrics.json."""
    path = out / "metrics.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    return [{"epoch": r["epoch"], "psnr": r["val_psnr"], "ssim": r["val_ssim"]}
            for r in rows if "val_psnr" in r]


def markdown(result: dict) -> str:
    arms = result["arms"]
    epochs = sorted({r["epoch"] for a in arms.values() for r in a["val"]})
    by = {name: {r["epoch"]: r for r in a["val"]} for name, a in arms.items()}
    lines = [f"# bf16 autocast vs FP32 training ({result['epochs']} epochs, seed {result['seed']})\n",
             f"Machine: {result['machine']['cpu']}, ISA: {' '.join(result['machine']['isa'])}.\n",
             f"Recipe: `dfn train {' '.join(RECIPE)}`, both runs at the same time.\n",
             "| epoch | FP32 val PSNR / SSIM | bf16 val PSNR / SSIM | bf16 - FP32 (dB) |",
             "|---|---|---|---|"]

    def cell(r: dict | None) -> str:
        return f"{r['psnr']:.2f} / {r['ssim']:.3f}" if r else "–"

    for e in epochs:
        f, b = by["fp32"].get(e), by["bf16"].get(e)
        diff = f"{b['psnr'] - f['psnr']:+.2f}" if f and b else "–"
        lines.append(f"| {e} | {cell(f)} | {cell(b)} | {diff} |")
    lines.append("")
    for name, a in arms.items():
        lines.append(f"- {name}: best {a['best']:.2f} dB; this invocation {a['wall_s']:.0f} s"
                     f"{' (resumed)' if a['resumed'] else ''}")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, a in result["arms"].items():
        ax.plot([r["epoch"] for r in a["val"]], [r["psnr"] for r in a["val"]], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation PSNR (dB, 40 held-out scenes)")
    ax.set_title(f"bf16 autocast vs FP32 training, seed {result['seed']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=2)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bf16-ab")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    from deepfusionnet.runtime.measure.machine import has_native_bf16, machine_key

    if not has_native_bf16():
        print("bf16_training: this CPU has no bf16 hardware (AVX512-BF16, AMX, Arm BF16); PyTorch would "
              "emulate bf16 about 80x slower than FP32, so the comparison belongs on a CPU that has it",
              file=sys.stderr)
        return 1
    runs = args.runs / f"seed{args.seed}"
    runs.mkdir(parents=True, exist_ok=True)
    procs, started, resumed = {}, time.monotonic(), {}
    for name, flag in ARMS.items():
        cmd = train_command(args.data, runs / name, args.epochs, args.seed, args.val_every, flag)
        resumed[name] = "--resume" in cmd
        with open(runs / f"{name}.log", "a") as log:
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    wall = {}
    try:
        while len(wall) < len(procs):  # each run's own wall time: whichever finishes first
            for name, proc in procs.items():
                if name not in wall and proc.poll() is not None:
                    wall[name] = time.monotonic() - started
            time.sleep(1)
    except KeyboardInterrupt:  # each run checkpoints on its own Ctrl-C; starting again resumes both
        for proc in procs.values():
            proc.wait()
        return 130
    failed = [name for name, proc in procs.items() if proc.returncode != 0]
    if failed:
        print(f"bf16_training: the {', '.join(failed)} run failed; see {portable(runs)}/<arm>.log",
              file=sys.stderr)
        return 1
    arms = {}
    for name in ARMS:
        val = validated(runs / name)
        arms[name] = {"val": val, "best": max(r["psnr"] for r in val), "wall_s": wall[name],
                      "resumed": resumed[name], "run": portable(runs / name)}
    result = {"epochs": args.epochs, "seed": args.seed, "recipe": RECIPE, "data": portable(args.data),
              "machine": machine_key(), "arms": arms}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / "bf16_training"
    md = markdown(result)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)
    plot(result, stem.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
