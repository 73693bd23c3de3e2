"""Score enhancers on LOL-v1's two crossed validation splits: the comparison that is fair between lineages.

The shipped enhancer's lineage (stage 7 on) trained on the image split (``--val-group image --val-seed 0``)
and held out its 40 pairs ("image40"); the scene-split runs (stages 16 on, ``--val-group scene``) held out
"scene40". The two held-out sets barely overlap, so each model has trained on most of the other's:
comparing on one split compares one model's training score with the other's held-out score. The mean over
both (80 frames) gives each model about 40 trained and 40 held-out frames. Writes
benchmarks/results/cross_split.{json,md}: per split, the mean over 80, and which frames each split's
runs trained on.

    .venv/bin/python benchmarks/cross_split.py --model runs/stage21/best.safetensors   # + the shipped weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from deepfusionnet.commands.eval import open_model
from deepfusionnet.runtime.measure.evaluate import evaluate
from deepfusionnet.runtime.images import atomic_write_bytes
from deepfusionnet.runtime.measure.pairs import find_pairs
from deepfusionnet.train.data import load_pairs, scene_labels, split_validation
from portable_paths import portable  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "lol-v1" / "train"
OUT = REPO / "benchmarks" / "results"
COUNT, SEED = 40, 0  # --val-count, --val-seed of both splits
SPLITS = {"image40": "image", "scene40": "scene"}  # name -> --val-group


def crossed_splits(data: Path) -> tuple[dict[str, list[int]], dict]:
    """Held-out indices of both splits, and how much of each the other split's runs trained on."""
    pairs = load_pairs(data)
    held, trained = {}, {}
    for name, group in SPLITS.items():
        trained[name], held[name] = split_validation(pairs, COUNT, seed=SEED, group=group)
    labels = scene_labels(pairs.high)
    overlap = {}
    for name in SPLITS:
        other = next(n for n in SPLITS if n != name)
        seen = set(trained[other])
        seen_scenes = {int(labels[i]) for i in seen}
        overlap[name] = {"frames": len(held[name]),
                         f"trained_by_{other}_runs": sum(i in seen for i in held[name]),
                         f"look_alike_only_in_{other}_training": sum(
                             i not in seen and int(labels[i]) in seen_scenes for i in held[name])}
    return held, overlap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help=f"LOL-v1 train pairs (default {DATA})")
    ap.add_argument("--model", action="append", default=[], metavar="FILE",
                    help="enhancer weights to score beside the shipped ones, repeatable")
    ap.add_argument("--backend", default="torch", help="inference backend for every model (default torch)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    held, overlap = crossed_splits(args.data)
    paths = find_pairs(args.data)  # load_pairs' order, so split indices address these paths
    rows = []
    for model in ["deepfusionnet", *args.model]:
        m, desc = open_model(model, args.backend)
        row = {"model": model if model == "deepfusionnet" else portable(model), "backend": desc["backend"]}
        try:
            per_image = []
            for split, idx in held.items():
                res = evaluate(m, [paths[i] for i in idx])
                row[split] = {"psnr": res.mean("psnr"), "ssim": res.mean("ssim")}
                per_image += [{"split": split, "name": s.name, "psnr": s.psnr, "ssim": s.ssim} for s in res.per_image]
        finally:
            m.close()
        row["mean80"] = {k: sum(row[s][k] for s in SPLITS) / len(SPLITS) for k in ("psnr", "ssim")}
        row["per_image"] = per_image
        print(f"{row['model']:<40} " + "  ".join(f"{s} {row[s]['psnr']:.3f}" for s in SPLITS)
              + f"  mean80 {row['mean80']['psnr']:.3f} / {row['mean80']['ssim']:.4f}", file=sys.stderr)
        rows.append(row)

    record = {"data": portable(args.data), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "splits": {k: f"--val-group {v} --val-count {COUNT} --val-seed {SEED}" for k, v in SPLITS.items()},
              "overlap": overlap, "models": rows}
    lines = [f"LOL-v1 train, the two {COUNT}-pair validation splits (`--val-count {COUNT} --val-seed {SEED}`, "
             "`--val-group image` and `scene`), full frames, RGB PSNR / SSIM as `dfn eval`. "
             f"image40: {overlap['image40']['trained_by_scene40_runs']} of 40 are training frames of the "
             f"scene-split runs; scene40: {overlap['scene40']['trained_by_image40_runs']} of 40 are training "
             "frames of the image-split runs (the shipped lineage).", "",
             "| Model | " + " | ".join(f"{s} PSNR / SSIM" for s in SPLITS) + " | mean of both |",
             "|---" * (len(SPLITS) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[s]['psnr']:.2f} / {r[s]['ssim']:.3f}"
                                                      for s in (*SPLITS, "mean80")) + " |")
    atomic_write_bytes(args.out / "cross_split.json", json.dumps(record, indent=1).encode())
    atomic_write_bytes(args.out / "cross_split.md", ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out / 'cross_split.md'} and cross_split.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
