"""2 x 2 tiles against the whole frame, with and without the shared global context, on every CPU backend.

For each backend (PyTorch from the shipped weights; ONNX Runtime and OpenVINO from the shipped graph and
its ``.context``/``.tile`` companions), frame size and photo: PSNR of the tiled output against the whole
frame's output from the same backend, the network alone (no exposure gate). "plain" is the tiling
without a shared context (feather-blended tiles, each pooling over itself).

    python benchmarks/tiling_agreement.py PHOTO... [--sizes 640x480,1920x1080]
        [--backends torch,onnxruntime,openvino]

Writes benchmarks/results/tiling_agreement.{json,md} and tiling_sheet.jpg (the first backend at the largest
size: whole frame, plain tiles, tiles sharing the context).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from deepfusionnet.runtime.enhancer import open_enhancer
from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.measure.machine import machine_info
from deepfusionnet.runtime.measure.robustness import two_by_two_tile
from deepfusionnet.runtime.metrics import psnr

from portable_paths import portable_tree

OUT = Path(__file__).resolve().parent / "results"


def measure(backend: str, photos: list[Path], sizes: list[tuple[int, int]], model: str,
            sheet=None) -> list[dict]:
    """One row per photo and size; ``sheet`` (a ContactSheet) gets the largest size's three outputs."""
    e = open_enhancer(model, backend, gate=False)
    rows = []
    try:
        for path in photos:
            img = read_image(path)
            for w, h in sizes:
                frame = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                side = two_by_two_tile(w, h)
                whole = replace(e, tile=1 << 30)(frame)
                t0 = time.perf_counter()
                tiled = replace(e, tile=side)(frame)
                seconds = time.perf_counter() - t0
                plain = replace(e, tile=side, companions=None, context=None)(frame)
                rows.append({"backend": backend, "photo": path.name, "size": f"{w}x{h}", "tile": side,
                             "context_db": round(float(psnr(tiled, whole)), 2),
                             "plain_db": round(float(psnr(plain, whole)), 2),
                             "tiled_seconds": round(seconds, 2)})
                print(json.dumps(rows[-1]), flush=True)
                if sheet is not None and (w, h) == max(sizes):
                    sheet.add(f"{path.name} {w}x{h}", whole, plain, tiled,
                              f"plain {rows[-1]['plain_db']:.1f} dB, shared {rows[-1]['context_db']:.1f} dB")
    finally:
        e.close()
    return rows


def report(rows: list[dict]) -> str:
    lines = ["# 2 x 2 tiles vs the whole frame (PSNR, dB)", "",
             "Produced by `benchmarks/tiling_agreement.py`. Network alone (no exposure gate); each backend's "
             "tiles against its own whole frame. `context`: tiles sharing the frame's global context (the "
             "runtime's default); `plain`: feather-blended tiles without it.", "",
             "| backend | size | photos | context worst | context mean | plain worst | plain mean |",
             "|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["backend"], r["size"]) for r in rows)
    for backend, size in keys:
        sel = [r for r in rows if r["backend"] == backend and r["size"] == size]
        c, p = [r["context_db"] for r in sel], [r["plain_db"] for r in sel]
        lines.append(f"| {backend} | {size} | {len(sel)} | {min(c):.2f} | {np.mean(c):.2f} | {min(p):.2f} | "
                     f"{np.mean(p):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="+", type=Path)
    ap.add_argument("--sizes", default="640x480,1920x1080")
    ap.add_argument("--backends", default="torch,onnxruntime,openvino")
    ap.add_argument("--model", default="deepfusionnet")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    from deepfusionnet.runtime.measure.sheet import ContactSheet

    sheet = ContactSheet(480, labels=("whole frame", "2x2 tiles, plain", "2x2 tiles, shared context"))
    backends = args.backends.split(",")
    rows = [r for b in backends for r in measure(b, args.photos, sizes, args.model,
                                                 sheet if b == backends[0] else None)]
    OUT.mkdir(exist_ok=True)
    doc = portable_tree({"model": args.model, "machine": machine_info(), "rows": rows})
    (OUT / "tiling_agreement.json").write_text(json.dumps(doc, indent=1) + "\n")
    (OUT / "tiling_agreement.md").write_text(report(rows))
    sheet.write(OUT / "tiling_sheet.jpg")
    print(report(rows))


if __name__ == "__main__":
    main()
