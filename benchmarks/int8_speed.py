"""The QAT INT8 graph against the other fast paths, side by side in one run (#37).

Rows, all timed round-robin in the same rounds by ``dfn bench``'s machinery
(``runtime.measure.bench.bench_group``), at each size:

- PyTorch eager FP32 (the reference of every ``× eager`` ratio),
- ``torch.compile`` (Inductor, default mode) under bf16 autocast, a backend registered by this script,
- OpenVINO's BF16 hint on the FP32 graph,
- the post-training INT8 graph (``dfn export deepfusionnet --precision int8``) on ONNX Runtime and OpenVINO,
- the quantization-aware INT8 graph (``dfn export QAT.safetensors --precision int8``) on ONNX Runtime,
  OpenVINO and TensorRT (native and ONNX Runtime's TensorRT EP: "not measured" without CUDA).

Each row has what it really ran as (``runtime.measure.ran_as``; the compiled row: the dtype every
convolution produced under autocast, probed once on the eager module), its share of this machine's
matmul floor (``runtime.measure.floor``; the torch rows' convolutions counted on the FP32 graph of the
same network) and mean PSNR over LOL-v1 eval15 (each graph scored once, at its own 600x400 size).

    .venv/bin/python benchmarks/int8_speed.py --qat QAT.safetensors --work int8bench-work \\
        --lol ../shared/data/lol-v1

Exports are cached in ``--work`` (reused while the weights' sha256 matches). Writes
benchmarks/results/int8_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL = "deepfusionnet"
PTQ, QAT = "ptq", "qat"
# (label, backend, precision, graph folder: None = the FP32 graph's, ptq or qat)
ROWS = [
    ("PyTorch eager FP32", "torch", "fp32", None),
    ("torch.compile, bf16 autocast", "torch-compile", "bf16", None),
    ("OpenVINO BF16 hint (FP32 graph)", "openvino", "bf16", None),
    ("ONNX Runtime INT8, post-training graph", "onnxruntime", "int8", PTQ),
    ("OpenVINO INT8, post-training graph", "openvino", "int8", PTQ),
    ("ONNX Runtime INT8, QAT graph", "onnxruntime", "int8", QAT),
    ("OpenVINO INT8, QAT graph", "openvino", "int8", QAT),
    ("TensorRT INT8, QAT graph", "tensorrt", "int8", QAT),
    ("TensorRT EP of ONNX Runtime INT8, QAT graph", "ort-trt", "int8", QAT),
]
EAGER, OV_BF16 = ROWS[0][0], ROWS[2][0]
COMPILED_PROBE: dict = {}  # the compiled row's conv dtypes (CompiledTorch.conv_dtypes)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the torch.compile + bf16 autocast backend ------------------------------------------------------

class CompiledTorch:
    """The shipped weights through ``torch.compile`` (Inductor) under CPU bf16 autocast."""

    name = "torch-compile"

    def __init__(self, path: Path, threads: int | None = None, autocast: str = "bf16") -> None:
        import torch

        from deepfusionnet.train.torch_backend import TorchBackend

        eager = TorchBackend(path, threads=threads)
        self.inputs, self.outputs = eager.inputs, eager.outputs
        self.dtype = {"bf16": torch.bfloat16, "fp32": None}[autocast]
        self.conv_dtypes = conv_output_dtypes(eager.model, self.dtype)
        COMPILED_PROBE["conv_dtypes"] = self.conv_dtypes  # read after the row's runner is closed
        self.model = torch.compile(eager.model, dynamic=False)

    def infer(self, feed: dict) -> dict:
        import numpy as np
        import torch

        (x,) = feed.values()
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
            y = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float()
        return {self.outputs[0].name: y.numpy()}

    def close(self) -> None:
        self.model = None


def conv_output_dtypes(model, dtype) -> dict[str, int]:
    """Convolutions counted by the dtype they produce under autocast (``dtype``; None: FP32), on a
    64x64 frame through the eager module: what the compiled graph is asked to compute."""
    import torch

    counts: Counter = Counter()
    names = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}
    def count(_module, _inputs, out) -> None:
        counts.update([names.get(out.dtype, str(out.dtype))])

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                    enabled=dtype is not None):
            model(torch.rand(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return dict(counts)


def load_compiled(path: Path, **options) -> CompiledTorch:
    return CompiledTorch(path, **options)


def register_compiled() -> None:
    """``torch-compile`` as a bench backend (weights files, bf16 only, on CPUs with bf16 hardware)."""
    from deepfusionnet.runtime.backends.base import BackendEntry, register

    register("torch-compile", BackendEntry(
        f"{__name__}:load_compiled", "weights", (), "train", "torch.compile under bf16 autocast",
        precisions={"bf16": {"autocast": "bf16"}}, unsupported={"*": "bf16 autocast rows only"},
        isa={"bf16": (("avx512_bf16", "amx_bf16"), "this CPU has no BF16 instructions (AVX512_BF16/AMX)")},
        requires="torch", cli=False))


# -- the graphs ---------------------------------------------------------------------------------------

def dfn(*args: str) -> None:
    """``dfn ARGS`` in a fresh process; raises with its last error line when it fails."""
    proc = subprocess.run([sys.executable, "-m", "deepfusionnet.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        raise SystemExit(f"dfn {' '.join(map(str, args[:2]))}: {lines[-1]}")


def export(source: str | Path, out: Path, weights_sha: str, *extra: str) -> dict:
    """``dfn export SOURCE -o OUT EXTRA``, skipped when OUT's sidecar records the same weights."""
    side = out.with_name(out.name + ".json")
    same = side.is_file() and json.loads(side.read_text()).get("source_weights_sha256") == weights_sha
    if out.is_file() and same:
        log(f"reusing {out.name} ({out.parent.name}/)")
    else:
        log(f"dfn export {Path(source).name} -> {out.parent.name}/{out.name} {' '.join(extra)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        dfn("export", source, "-o", out, *extra)
    doc = json.loads(side.read_text())
    cal, par = doc.get("calibration") or {}, (doc.get("parity") or {}).get("onnxruntime") or {}
    return {"file": out.name, "onnx_sha256": doc.get("onnx_sha256"),
            "source_weights": Path(doc.get("source_weights") or "?").name,
            "source_weights_sha256": doc.get("source_weights_sha256"), "calibration": {
                k: (len(v) if isinstance(v, list) else v) for k, v in cal.items()
                if k in ("method", "frames", "convs_int8", "convs_total", "excluded_nodes")},
            "parity_psnr_min": (par.get("summary") or {}).get("psnr_min"), "parity_passed": par.get("passed")}


def prepare_graphs(work: Path, qat: Path, calib: Path) -> dict:
    """FP32 and post-training INT8 graphs in ``work/ptq``, the QAT INT8 graph in ``work/qat`` (beside a
    link to the FP32 graph, which the bench planner resolves a folder's variants against)."""
    from deepfusionnet.runtime.artifacts import file_sha256, resolve

    shipped_sha = file_sha256(resolve(MODEL, "weights").path)
    ptq, qdir = work / PTQ, work / QAT
    graphs = {"fp32": export(MODEL, ptq / f"{MODEL}.onnx", shipped_sha),
              "ptq_int8": export(MODEL, ptq / f"{MODEL}.int8.onnx", shipped_sha, "--precision", "int8",
                                 "--calib", calib),
              "qat_int8": export(qat, qdir / f"{MODEL}.int8.onnx", file_sha256(qat), "--precision", "int8")}
    link = qdir / f"{MODEL}.onnx"
    if not link.exists():
        link.symlink_to(Path("..") / PTQ / f"{MODEL}.onnx")
    graphs["qat_weights"] = {"file": qat.name, "sha256": file_sha256(qat), "bytes": qat.stat().st_size}
    return graphs


# -- the run ------------------------------------------------------------------------------------------

def torch_floor(rows: list[dict], fp32_graph: Path, floor: dict | None) -> None:
    """The torch rows (weights files, no graph to count) get the FP32 graph's conv multiply-adds, in
    the precision they ran, and their fraction of the floor; the compiled row its probed ran-as."""
    from deepfusionnet.runtime.measure.floor import fraction_of_floor
    from deepfusionnet.runtime.measure.ran_as import conv_table

    for r in rows:
        if r["backend"] not in ("torch", "torch-compile") or not r.get("infer_p50_ms"):
            continue
        w, h = map(int, r["size"].split("x"))
        table, _ = conv_table(str(fp32_graph), h, w)
        probe = r["detail"].get("conv_dtypes") or {"fp32": len(table or ())}
        precision = next(iter(probe)) if len(probe) == 1 else None
        r["ran_as"] = precision or " + ".join(f"{p} convs {n}" for p, n in probe.items())
        if not table or precision is None:
            r["detail"]["floor_note"] = "mixed conv precisions: not split by MACs" if table else "no MACs"
            continue
        macs = {precision: sum(m for _, m, _ in table)}
        got = fraction_of_floor(macs, r["infer_p50_ms"] / 1000, floor)
        r["detail"].update(macs_by_precision=macs, floor_note=got["floor_note"],
                           macs_counted_on=fp32_graph.name)
        r["gflops"], r["floor_fraction"] = got["gflops"], got["floor_fraction"]


def run_size(size: tuple[int, int], cfg, work: Path, quality_done: dict) -> list[dict]:
    """Every row of ``ROWS`` at ``size`` in one round-robin group; each row dict gets its label."""
    from deepfusionnet.runtime.measure import bench as B

    members = [(b, p, work / g) if g else (b, p) for _, b, p, g in ROWS]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = B.bench_group(MODEL, size, members, cfg, quality_done)
    load1 = os.getloadavg()
    out = []
    for (label, *_), row in zip(ROWS, rows):
        if row.backend == "torch-compile":
            row.detail["conv_dtypes"] = COMPILED_PROBE.get("conv_dtypes")
        folder = row.detail.get("artifacts")
        out.append({"label": label, "graph": Path(folder).name if folder else "fp32", **row.to_json()})
    for r in out:
        r["load_avg_group"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in load1],
                               "wall_s": round(time.perf_counter() - t0, 1)}
    return out


def run(args: argparse.Namespace) -> dict:
    """Exports, floor, then each size's group; quality is scored in the first group (each graph once)."""
    from deepfusionnet.runtime.measure import bench as B
    from deepfusionnet.runtime.measure.floor import machine_floor
    from deepfusionnet.runtime.measure.machine import machine_info
    from deepfusionnet.runtime.measure.pairs import find_pairs
    from deepfusionnet.runtime.measure.scoring import quality_deltas

    graphs = prepare_graphs(args.work, args.qat, args.lol / "train" / "low")
    register_compiled()
    pairs = find_pairs(args.lol / "eval15")[: args.quality_limit or None]
    log(f"floor ({args.floor}); load {os.getloadavg()}")
    floor = machine_floor(refresh=args.floor == "measure")
    cfg = B.Settings(args.runs, args.warmup, args.threads, args.work / PTQ, pairs, str(args.work / "cache"),
                     log=log, floor=floor)
    rows, quality_done, t0 = [], {}, time.perf_counter()
    for size in args.sizes:
        rows += run_size(size, cfg, args.work, quality_done)
    fp32_graph = args.work / PTQ / f"{MODEL}.onnx"
    torch_floor(rows, fp32_graph, floor)
    _deltas(rows, quality_deltas)
    _ratios(rows)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "issue": 37,
            "machine": machine_info(), "floor": floor, "graphs": graphs, "rows": rows,
            "wall_s": round(time.perf_counter() - t0, 1),
            "settings": {"sizes": [f"{w}x{h}" for w, h in args.sizes], "runs": args.runs,
                         "warmup": args.warmup, "threads": args.threads or "every core",
                         "quality_images": len(pairs), "torch_compile": "torch.compile(dynamic=False), "
                         "Inductor default mode, CPU bf16 autocast",
                         "timing": "round-robin within each size: every row's i-th run next to the "
                                   "others'; end to end = decode+pre+infer+post"}}


def _deltas(rows: list[dict], quality_deltas) -> None:
    """``psnr_delta_db`` against PyTorch eager FP32 (bench's own rule), per size."""
    from deepfusionnet.runtime.measure.rows import Row

    fields = set(Row.__dataclass_fields__)
    for size in dict.fromkeys(r["size"] for r in rows):
        group = [r for r in rows if r["size"] == size]
        objs = [Row(**{k: v for k, v in r.items() if k in fields}) for r in group]
        quality_deltas(objs)
        for r, o in zip(group, objs):
            r["psnr_delta_db"] = o.psnr_delta_db


def _ratios(rows: list[dict]) -> None:
    """× eager (bench's) and × OpenVINO BF16: the reference row's p50 over this row's, same rounds."""
    for size in dict.fromkeys(r["size"] for r in rows):
        group = [r for r in rows if r["size"] == size]
        ref = next((r for r in group if r["label"] == OV_BF16 and r["p50_ms"]), None)
        for r in group:
            r["speedup_vs_openvino_bf16"] = ref["p50_ms"] / r["p50_ms"] if ref and r["p50_ms"] else None


# -- output -------------------------------------------------------------------------------------------

def _f(v, digits: int = 1, suffix: str = "") -> str:
    return "–" if v is None else f"{v:.{digits}f}{suffix}"


def _graph_line(name: str, g: dict) -> str:
    cal = g.get("calibration") or {}
    convs = f"{cal['convs_int8']}/{cal['convs_total']} convs INT8, " if cal.get("convs_total") else ""
    worst = g.get("parity_psnr_min")
    parity = f"parity vs PyTorch worst {worst:.1f} dB" if worst else "parity –"
    return f"- {name}: `{g['file']}` from `{Path(g.get('source_weights') or '?').name}` ({convs}{parity})"


def markdown(doc: dict) -> str:
    """The table (one block per size), the machine, floor, graphs and load."""
    from deepfusionnet.runtime.measure.floor import floor_markdown
    from deepfusionnet.runtime.measure.report import machine_markdown

    s = doc["settings"]
    lines = [f"# QAT INT8 against the other fast paths ({doc['date']}, issue #37)", "",
             f"`python benchmarks/int8_speed.py`: {s['runs']} timed runs per row after {s['warmup']} "
             f"warm-up, rows timed round-robin within each size, threads: {s['threads']}. p50 is end to end "
             "(decode, pre, inference, post); `× eager` and `× OV BF16` are that row's p50 against PyTorch "
             "eager FP32 and OpenVINO BF16 in the same rounds (above 1: faster); `% floor` is the inference "
             "p50 against this machine's matmul floor in the precision each conv ran; PSNR is the mean over "
             f"{s['quality_images']} LOL-v1 eval15 pairs, Δ against PyTorch eager FP32.", "",
             machine_markdown(doc["machine"]).strip(), "", floor_markdown(doc["floor"]).strip(), ""]
    head = ("| row | ran as | p50 ms | infer p50 ms | × eager | × OV BF16 | % floor | eval15 PSNR | Δ dB "
            "| first run ms | status |")
    for size in s["sizes"]:
        group = [r for r in doc["rows"] if r["size"] == size]
        lines += [f"## {size}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for r in group:
            frac = r["floor_fraction"]
            lines.append(f"| {r['label']} | {r.get('ran_as') or '–'} | {_f(r['p50_ms'])} "
                         f"| {_f(r['infer_p50_ms'])} | {_f(r['speedup_vs_torch'], 2)} "
                         f"| {_f(r['speedup_vs_openvino_bf16'], 2)} | {_f(frac and 100 * frac)} "
                         f"| {_f(r['psnr_eval15'], 2)} | {_f(r['psnr_delta_db'], 3)} "
                         f"| {_f(r['first_run_ms'], 0)} | {r['status']} |")
        load = group[0]["load_avg_group"]
        lines += ["", f"Load average (1/5/15 min) at the start of the {size} group {load['start']}, at the "
                      f"end {load['end']}; the group took {load['wall_s']} s.", ""]
    lines += ["Graphs:", ""] + [_graph_line(k, doc["graphs"][k]) for k in ("fp32", "ptq_int8", "qat_int8")]
    q = doc["graphs"]["qat_weights"]
    lines += [f"- QAT weights: `{q['file']}` (sha256 {q['sha256'][:12]})", "",
              "![p50 per row at each size, and eval15 PSNR against p50](int8_speed.png)", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    """Left: p50 per row at each size (log). Right: eval15 PSNR against p50 at the first size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = doc["settings"]["sizes"]
    labels = [r[0] for r in ROWS if any(x["label"] == r[0] and x["p50_ms"] for x in doc["rows"])]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    height = 0.8 / len(sizes)
    for k, size in enumerate(sizes):
        p50 = {r["label"]: r["p50_ms"] for r in doc["rows"] if r["size"] == size}
        ys = [i + k * height for i in range(len(labels))]
        ax.barh(ys, [p50.get(lbl) or 0 for lbl in labels], height=height, label=size)
        for y, lbl in zip(ys, labels):
            if p50.get(lbl):
                ax.annotate(f"{p50[lbl]:.0f}", (p50[lbl], y), xytext=(3, -3), textcoords="offset points",
                            fontsize=7)
    ax.set_yticks([i + height * (len(sizes) - 1) / 2 for i in range(len(labels))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end p50, ms (log)")
    ax.legend(fontsize=7)
    ax.grid(axis="x", which="both", alpha=0.3)
    first = [r for r in doc["rows"] if r["size"] == sizes[0] and r["p50_ms"] and r["psnr_eval15"] is not None]
    markers = "osD^v<>ph"
    for k, r in enumerate(first):  # a legend, not labels: the fast rows sit on top of each other
        bx.scatter(r["p50_ms"], r["psnr_eval15"], s=36, marker=markers[k % len(markers)], label=r["label"],
                   alpha=0.8)
    bx.legend(fontsize=6.5, loc="best")
    bx.set_xscale("log")
    bx.set_xlabel(f"end-to-end p50 at {sizes[0]}, ms (log)")
    bx.set_ylabel("eval15 PSNR, dB")
    bx.grid(which="both", alpha=0.3)
    cpu = doc["machine"].get("cpu", "")
    fig.suptitle(f"QAT INT8 vs the other fast paths — {cpu}, {doc['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qat", type=Path, required=True,
                    help="QAT weights (dfn train --qat), exported to the INT8 graph to time")
    ap.add_argument("--work", type=Path, required=True, help="where the exported graphs are kept and reused")
    ap.add_argument("--lol", type=Path, default=REPO.parent / "shared" / "data" / "lol-v1",
                    help="LOL-v1 root: eval15/ scores every graph, train/low calibrates post-training INT8")
    ap.add_argument("--sizes", default="600x400,1280x720", help="comma list of WIDTHxHEIGHT")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per row (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (the first compiles)")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: every core)")
    ap.add_argument("--quality-limit", type=int, default=None, help="score only the first N eval15 pairs")
    ap.add_argument("--floor", choices=("measure", "cached"), default="measure")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for int8_speed.{json,md,png}")
    ap.add_argument("--name", default="int8_speed", help="file stem of the results")
    args = ap.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.work, args.qat, args.lol = args.work.resolve(), args.qat.resolve(), args.lol.resolve()
    doc = run(args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from portable_paths import portable_tree

    doc = portable_tree(_scrub(doc, args.work))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc).replace("int8_speed.png", f"{args.name}.png")
    (args.out / f"{args.name}.md").write_text(text)
    plot(doc, args.out / f"{args.name}.png")
    print(text)
    return 0


def _scrub(obj, work: Path):
    """Paths under ``--work`` (outside the checkout) become ``WORK/...``."""
    if isinstance(obj, dict):
        return {k: _scrub(v, work) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v, work) for v in obj]
    if isinstance(obj, str) and str(work) in obj:
        return obj.replace(str(work), "WORK")
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
