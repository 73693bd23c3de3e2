"""What ``--backend auto``'s first decision costs at a new frame size: peak memory and time of the first
``dfn enhance --backend auto`` (which measures the candidates) against the second (which reuses the
cached decision), on one generated frame, with a fresh cache directory.

Each run is its own process, which writes its own high-water mark (``ru_maxrss``) when it ends, so the
second run's figure is not the maximum of both (as ``RUSAGE_CHILDREN`` would be).

    .venv/bin/python benchmarks/auto_first_decision.py                    # 1920x1080, deepfusionnet
    .venv/bin/python benchmarks/auto_first_decision.py --json benchmarks/results/auto_first_decision.json

The result holds no machine paths: sizes, seconds, MiB, the pick and each candidate's median latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The child: run the CLI in-process, then record this process's peak resident memory.
CHILD = """
import json, resource, sys
from deepfusionnet.cli import main
rc = main(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
open(sys.argv[1], "w").write(json.dumps({"rc": rc, "peak_rss_kib": peak}))
sys.exit(rc)
"""


def run_once(argv: list[str], env: dict, record: Path) -> dict:
    """One ``dfn`` run in a fresh process: exit code, wall seconds, peak RSS in MiB."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(record), *argv], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dfn {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    rec = json.loads(record.read_text())
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(rec["peak_rss_kib"] / 1024, 1)}


def measure(model: str, size: tuple[int, int]) -> dict:
    """First (deciding) and second (cached) ``dfn enhance --backend auto`` on a generated frame."""
    import cv2

    from deepfusionnet.runtime.measure.frames import synthetic_frame

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame = root / "frame.png"
        cv2.imwrite(str(frame), synthetic_frame(size)[..., ::-1])
        env = {**os.environ, "DFN_CACHE": str(root / "cache"), "XDG_CACHE_HOME": str(root / "xdg")}
        argv = ["enhance", str(frame), "-o", str(root / "out.png"), "--backend", "auto", "--model", model]
        first = run_once(argv, env, root / "first.json")
        decision = json.loads((root / "cache" / "auto.json").read_text())
        second = run_once(argv, env, root / "second.json")
    (rec,) = decision.values()
    return {"model": Path(model).name, "size": f"{size[0]}x{size[1]}", "first": first, "second": second,
            "picked": rec["label"], "decided_on": rec.get("decided_on", rec.get("size")),
            "candidates": {c["label"]: c["latency_ms"] and round(c["latency_ms"], 1) for c in rec["candidates"]},
            "peak_ratio": round(first["peak_rss_mib"] / second["peak_rss_mib"], 2),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deepfusionnet")
    ap.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the generated frame")
    ap.add_argument("--json", metavar="FILE", help="also write the result here")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    result = measure(args.model, (w, h))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
