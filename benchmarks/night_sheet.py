"""Contact sheet of real night photos before and after enhancement, with and without the exposure gate.

Rows are photos from a folder (e.g. DICM and LIME), chosen to span dark to bright scenes; columns are
the input, the bare network (``--exposure-gate off``) and the default output. Writes
benchmarks/results/night_sheet.jpg and a JSON of per-photo mean brightness and gate weight.

    .venv/bin/python benchmarks/night_sheet.py data/real-night/DICM data/real-night/LIME --rows 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def pick(paths: list[Path], rows: int) -> list[Path]:
    """``rows`` photos evenly spread over the folder's range of median brightness."""
    from deepfusionnet.runtime.images import read_image

    med = sorted((float(np.median(read_image(p).mean(axis=2))), p) for p in paths)
    idx = np.linspace(0, len(med) - 1, rows).round().astype(int)
    return [med[i][1] for i in sorted(set(idx))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--model", default="deepfusionnet")
    ap.add_argument("--width", type=int, default=260)
    args = ap.parse_args(argv)

    import cv2

    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.runtime.images import IMAGE_SUFFIXES, read_image
    from deepfusionnet.runtime.measure.sheet import ContactSheet
    from deepfusionnet.runtime.processing import to_image, to_tensor

    paths = sorted(p for f in args.folders for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    enh = open_enhancer(args.model, "onnxruntime")
    sheet = ContactSheet(args.width, labels=("input", "network alone", "default (exposure gate)"))
    info = []
    for p in pick(paths, args.rows):
        img = read_image(p)
        f = min(1.0, 800 / max(img.shape[:2]))  # the sheet shows thumbnails; enhance at most 800 px
        if f < 1:
            img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        x = to_tensor(img)
        bare = enh.run_network(x)
        gated = enh.gate.apply(x, bare)
        w = float(enh.gate.weight(x).mean())
        sheet.add(f"{p.parent.name}/{p.name}", img, to_image(bare), to_image(gated), f"gate weight {w:.2f}")
        info.append({"photo": f"{p.parent.name}/{p.name}", "mean": float(img.mean() / 255), "gate_weight": w})
    enh.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    sheet.write(RESULTS / "night_sheet.jpg")
    (RESULTS / "night_sheet.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
