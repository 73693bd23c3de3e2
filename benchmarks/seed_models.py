"""The seed methods side by side: one table of quality x speed x size for every model that ships weights.

For each model, everything goes through the dfn CLI as a user runs it:
- ``dfn export NAME --precision fp32|fp16|int8`` (conformance gate and parity against PyTorch included),
- ``dfn eval`` of the FP32 graph on eval15 (standard protocol: full resolution, no GT-mean),
- MACs of the FP32 graph (``runtime.measure.macs``) at the input that gives a 600x400 output,
- one ``dfn bench`` run with the auto backend timing every model's graphs at that size (p50).
Writes benchmarks/results/seed_models.{json,md,png}.

    .venv/bin/python benchmarks/seed_models.py --lol data/lol-v1
    .venv/bin/python benchmarks/seed_models.py ship NAME RUN_DIR --budget "1 thread x 30 min"  # pack weights

``ship`` copies a run's ``best.safetensors`` into the package (runtime/weights/NAME.safetensors) with
float16 storage (half the size; the model computes in FP32 as before) and its recipe and budget in the
metadata, which the table's training column reads.
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

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = ["deepfusionnet", "unet-sid", "mirnet-v2", "cnn", "cyclegan-ema-aspp", "neid"]
OUTPUT_SIZE = (600, 400)

# What each paper reports, and whether it can be read against our eval15 column (seeds and
# design notes: protocol, data and resolution).
PAPER = {
    "deepfusionnet": ("26.30 / 0.928",
                      "no: a 256x256 resize of LOL with its own split; SSIM is the train figure"),
    "unet-sid": ("27.25 / 0.756", "no: SID raw-domain test set, not LOL"),
    "mirnet-v2": ("-", "the study reports no PSNR (classification-style metrics only)"),
    "cnn": ("-", "the study reports no PSNR (classification-style metrics only)"),
    "cyclegan-ema-aspp": ("20.26 / 0.712",
                          "roughly: LOL, resolution and SSIM variant unstated; 200 epochs on a GPU"),
    "neid": ("22.83 / 0.78",
             "protocol yes (x0.5 bicubic input, 600x400 output); 2000 epochs vs our short run"),
}


def dfn(*args: str, timeout: float = 3600) -> dict:
    """Run ``dfn ARGS --json`` in a fresh process; its JSON, or ``{"error": last stderr line}``."""
    cmd = [sys.executable, "-m", "deepfusionnet.cli", *map(str, args), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        errors = [ln for ln in lines if ": error: " in ln]  # the CLI's one-line error, not progress output
        return {"error": (errors or lines or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout)


def input_size(scale: int) -> tuple[int, int]:
    return OUTPUT_SIZE[0] // scale, OUTPUT_SIZE[1] // scale


def _exported(graph: Path, weights_sha: str) -> dict | None:
    """The sidecar of an earlier export of the same weights at ``graph`` (``--reuse``), else None."""
    side = graph.with_name(graph.name + ".json")
    if not (graph.is_file() and side.is_file()):
        return None
    doc = json.loads(side.read_text())
    return doc if doc.get("source_weights_sha256") == weights_sha else None


def export_all(name: str, work: Path, calib: Path, reuse: bool = False) -> dict:
    """fp32/fp16/int8 graphs as WORK/NAME{,.fp16,.int8}.onnx (the names dfn bench --artifacts reads)."""
    from deepfusionnet.runtime.artifacts import file_sha256, shipped_path

    sha = file_sha256(shipped_path(name, "weights"))
    out = {}
    for precision, suffix in (("fp32", ""), ("fp16", ".fp16"), ("int8", ".int8")):
        extra = ["--calib", calib] if precision == "int8" else []
        graph = work / f"{name}{suffix}.onnx"
        t0 = time.perf_counter()
        doc = (_exported(graph, sha) if reuse else None) or dfn("export", name, "-o", graph, "--precision",
                                                                 precision, *extra)
        row = {"seconds": doc.get("export_seconds", round(time.perf_counter() - t0, 1))}
        if "error" in doc:
            row["error"] = doc["error"]
        else:
            parity = next(iter(doc.get("parity", {}).values()), {})
            summary = parity.get("summary", {})
            row.update(passed=parity.get("passed"), psnr_min=summary.get("psnr_min"),
                       psnr_mean=summary.get("psnr_mean"))
            if precision == "int8":
                cal = doc.get("calibration", {})
                row.update(convs_int8=cal.get("convs_int8"), convs_total=cal.get("convs_total"))
        out[precision] = row
        print(f"{name} {precision}: {row}", file=sys.stderr, flush=True)
    return out


def weights_facts(name: str) -> dict:
    from deepfusionnet.runtime.artifacts import safetensors_metadata, shipped_path
    from deepfusionnet.runtime.measure.macs import safetensors_params

    path = shipped_path(name, "weights")
    meta = safetensors_metadata(path)
    return {"params": safetensors_params(path), "budget": meta.get("budget", "see docs/training.md"),
            "training": meta.get("training", ""), "val_psnr": meta.get("val_psnr")}


def scored(graph: Path, data: Path, reuse: bool) -> dict:
    """``dfn eval`` of ``graph`` on ``data``, the network alone; kept beside the graph for ``--reuse``."""
    from deepfusionnet.runtime.artifacts import file_sha256

    kept, sha = graph.with_name(graph.name + ".eval.json"), file_sha256(graph)
    if reuse and kept.is_file() and json.loads(kept.read_text()).get("onnx_sha256") == sha:
        return json.loads(kept.read_text())
    ev = dfn("eval", graph, "--data", data, "--exposure-gate", "off")
    if "error" not in ev:
        kept.write_text(json.dumps({**ev, "onnx_sha256": sha}))
    return ev


def model_row(name: str, work: Path, lol: Path, reuse: bool = False) -> dict:
    from deepfusionnet.runtime.artifacts import SHIPPED
    from deepfusionnet.runtime.measure.macs import onnx_conv_macs

    scale, multiple, _ = SHIPPED[name]
    calib = lol / "train" / "low"
    row: dict = {"model": name, **weights_facts(name), "export": export_all(name, work, calib, reuse)}
    graph = work / f"{name}.onnx"
    if graph.is_file():
        w, h = (-(-v // multiple) * multiple for v in input_size(scale))  # as the runtime pads it
        macs, _ = onnx_conv_macs(graph, h, w)
        row["macs_g"] = round(macs / 1e9, 1) if macs else None
        ev = scored(graph, lol / "eval15", reuse)
        row["eval15"] = {"error": ev["error"]} if "error" in ev else {"psnr": ev["psnr"], "ssim": ev["ssim"]}
    row["paper"], row["comparable"] = PAPER.get(name, ("-", ""))
    return row


def latency(names: list[str], work: Path, runs: int) -> dict:
    """p50 per model with the auto backend at the input that gives a 600x400 output, one dfn bench run
    per input size (models of one scale are timed in the same run)."""
    from deepfusionnet.runtime.artifacts import SHIPPED

    out = {}
    for scale in sorted({SHIPPED[n][0] for n in names}):
        group = [n for n in names if SHIPPED[n][0] == scale and (work / f"{n}.onnx").is_file()]
        if not group:
            continue
        w, h = input_size(scale)
        doc = dfn("bench", *group, "--backend", "auto", "--size", f"{w}x{h}", "--runs", str(runs),
                  "--artifacts", work)
        for r in doc.get("rows", []):
            out[r["model"]] = {"p50_ms": r.get("p50_ms"), "picked": r.get("picked"),
                               "status": r.get("status"),
                               "size": f"{w}x{h}"}
    return out


def write_markdown(doc: dict, path: Path) -> None:
    lines = [
        "# Seed methods side by side",
        "",
        f"Measured {doc['date']} on {doc['machine']}; one run of `benchmarks/seed_models.py`. "
        "eval15: standard "
        "protocol (full resolution, RGB PSNR/SSIM, no GT-mean), the network alone (no exposure gate); NEID "
        "gets the low frame halved (bicubic) and returns 600x400. MACs and latency at the input that gives a "
        "600x400 output. Parity: worst PSNR of the "
        "exported graph against PyTorch on the check frames (pass = within the export's tolerance). Latency: "
        "`dfn bench --backend auto`, p50 end to end; GPU and Jetson: not measured.",
        "",
        "| model | params | MACs @600x400 | eval15 PSNR / SSIM | paper (comparable?) | training budget | "
        "FP16 parity | INT8 parity (INT8 convs) | CPU p50 (backend) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        ev = r.get("eval15", {})
        q = f"{ev['psnr']:.2f} / {ev['ssim']:.3f}" if "psnr" in ev else ev.get("error", "-")

        def parity(p: str) -> str:
            e = r["export"].get(p, {})
            if "error" in e:
                return "fails: " + e["error"][:60]
            mark = "pass" if e.get("passed") else "FAIL"
            convs = f" ({e['convs_int8']}/{e['convs_total']})" if e.get("convs_total") else ""
            return f"{mark}, {e['psnr_min']:.1f} dB{convs}" if e.get("psnr_min") is not None else mark

        lat = doc["latency"].get(r["model"], {})
        speed = f"{lat['p50_ms']:.0f} ms ({lat.get('picked') or 'auto'})" if lat.get("p50_ms") else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r.get('macs_g', '-')} G | {q} | "
                     f"{r['paper']} ({r['comparable']}) | {r['budget']} | {parity('fp16')} | "
                     f"{parity('int8')} | "
                     f"{speed} |")
    lines += ["", "![quality vs latency](seed_models.png)", ""]
    path.write_text("\n".join(lines))


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in doc["rows"]:
        lat, ev = doc["latency"].get(r["model"], {}), r.get("eval15", {})
        if lat.get("p50_ms") and "psnr" in ev:
            ax.scatter(lat["p50_ms"], ev["psnr"], s=30 + r["params"] / 2e5)
            ax.annotate(r["model"], (lat["p50_ms"], ev["psnr"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency, p50 ms at a 600x400 output (auto backend, log scale)")
    ax.set_ylabel("eval15 PSNR (dB)")
    ax.set_title("Seed methods: quality vs latency (marker size ~ parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(args: argparse.Namespace) -> int:
    from deepfusionnet.runtime.artifacts import SHIPPED
    from deepfusionnet.runtime.measure.machine import machine_info

    names = [n for n in args.models if n in SHIPPED]
    missing = sorted(set(args.models) - set(names))
    if missing:
        print(f"no shipped weights for {', '.join(missing)}: left out", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dfn-seed-models-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [model_row(n, work, args.lol, args.reuse) for n in names]
        lat = latency(names, work, args.runs) if not args.no_latency else {}
    info = machine_info()
    doc = {"date": time.strftime("%Y-%m-%d"), "machine": info.get("cpu", "this CPU"), "machine_info": info,
           "rows": rows, "latency": lat}
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from portable_paths import portable_tree

    (RESULTS / "seed_models.json").write_text(json.dumps(portable_tree(doc), indent=2))
    write_markdown(doc, RESULTS / "seed_models.md")
    plot(doc, RESULTS / "seed_models.png")
    print((RESULTS / "seed_models.md").read_text())
    return 0


def ship(args: argparse.Namespace) -> int:
    """Pack RUN/best.safetensors as runtime/weights/NAME.safetensors with float16 storage."""
    import torch
    from safetensors.torch import load_file, save_file

    from deepfusionnet.runtime.artifacts import WEIGHTS_DIR
    from deepfusionnet.train.models import get_spec
    from deepfusionnet.train.weights import read_metadata

    src = Path(args.run) / "best.safetensors"
    spec, meta = get_spec(args.name), read_metadata(src)
    config = json.loads((Path(args.run) / "config.json").read_text())
    state = load_file(str(src))
    packed = {}
    for k, v in state.items():
        half = v.half() if v.is_floating_point() else v
        # Only where float16 holds the tensor: finite, and within 0.1% of it in norm (entries below
        # float16's range flush to zero, which that allows); otherwise it stays FP32.
        err = (half.float() - v).norm() / v.norm().clamp_min(1e-12) if v.is_floating_point() else 1.0
        ok = v.is_floating_point() and bool(torch.isfinite(half).all()) and float(err) < 1e-3
        packed[k] = half.contiguous() if ok else v.contiguous()
    recipe = {k: config[k] for k in ("epochs", "batch_size", "crop", "lr", "lr_schedule", "pixel_loss",
                                     "ssim_weight", "unpaired", "unpaired_extra", "val_count", "val_seed",
                                     "seed")
              if k in config}
    if recipe.get("unpaired_extra"):  # a folder on the training machine: its name is the provenance
        recipe["unpaired_extra"] = Path(recipe["unpaired_extra"]).name
    history = json.loads((Path(args.run) / "metrics.json").read_text())
    rows = history if isinstance(history, list) else history.get("history", [])
    meta.update(model=args.name, scale=str(spec.scale), multiple=str(spec.multiple), task=spec.task,
                description=spec.description, storage="float16", budget=args.budget,
                training=f"{len(rows)} epochs, {rows[-1].get('step', '?') if rows else 0} steps; "
                         + json.dumps(recipe, separators=(",", ":")))
    dst = WEIGHTS_DIR / f"{args.name}.safetensors"
    save_file(packed, str(dst), metadata={k: str(v) for k, v in meta.items()})
    dst.chmod(0o644)
    print(f"{dst}: {dst.stat().st_size / 1e6:.1f} MB, val_psnr {meta.get('val_psnr')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ship"]:
        ap = argparse.ArgumentParser(prog="seed_models.py ship")
        ap.add_argument("name")
        ap.add_argument("run", help="a dfn train --out folder")
        ap.add_argument("--budget", required=True, help='e.g. "1 CPU thread x 30 min"')
        return ship(ap.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lol", type=Path, required=True, help="LOL-v1 root (eval15/ and train/ or our485/)")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per latency row")
    ap.add_argument("--work", type=Path, default=None, help="keep the exported graphs (and rows) here")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse graphs already in --work that were exported from the same weights")
    ap.add_argument("--no-latency", action="store_true", help="export and score only (time later)")
    return table(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
