"""NVIDIA Model Optimizer's ONNX PTQ (``modelopt.onnx.quantization.quantize``) on the project's FP32 graphs (#31).

Runs in its own virtual environment, never the project's (nvidia-modelopt pins onnx ~1.21 and pulls
onnxruntime-gpu and cupy): it imports numpy, cv2, onnx, onnxruntime and modelopt only, no deepfusionnet
module. Each ``run`` quantizes one FP32 graph once (symmetric INT8, calibration on the CPU through ONNX
Runtime), times the ``quantize`` call, and measures the output:

* parity: worst/mean PSNR (outputs clipped to [0, 1], data range 1) against the FP32 graph on 16 frames
  from the calibration folder that calibration did not use, at their own size (LOL: 600x400), both graphs
  on ONNX Runtime's CPU provider with ``session.x64quantprecision`` = 1 (as the project runs INT8), by
  default the project venv's onnxruntime in a subprocess (``--parity-python``): onnxruntime-gpu 1.24's CPU
  QuantizeLinear truncates FP16 inputs instead of rounding them, which sinks ModelOpt's FP16 graphs;
* structure: convs whose weight comes from a DequantizeLinear, DequantizeLinear nodes reading more than
  8 bits (INT32 biases), nonzero zero points, Q/DQ on activations with per-channel scales, which other op
  types read a DequantizeLinear, FP16 tensors; and whether ``polygraphy check lint`` passes.

Calibration frames are the project's: ``count`` frames spread evenly over the sorted folder
(``np.linspace(0, n - 1, count).round()``), cover-resized with OpenCV (INTER_AREA when shrinking) and
centre-cropped to 320x240, padded to a multiple of 8; check frames are 16 spread evenly over the rest
(``calibration_images(dir, 16, skip=calibration)``).

Variants: ``defaults`` (ModelOpt's own choice of ops and FP16 for everything left unquantized),
``excl`` (the same plus ``nodes_to_exclude`` = what the project's route keeps float: the sidecar's
calibration.excluded_nodes when it describes the same model, else ``default_int8_exclusions`` computed
by the project's venv), ``conv-fp32`` (``excl`` restricted to convs with FP32 elsewhere: the project
route's placement, ModelOpt's calibration); ``excl-fp32`` and ``conv-fp16`` fill in the 2x2 (ModelOpt's
op choice or convs only) x (FP16 or FP32 elsewhere) that tells which of the two costs parity.

    MO/bin/python benchmarks/int8_modelopt.py fp16-time            # the project's FP16 export
    MO/bin/python benchmarks/int8_modelopt.py run --model deepfusionnet --fp32 fp32.onnx \\
        --variant defaults --method entropy
    MO/bin/python benchmarks/int8_modelopt.py report               # results/int8_modelopt.md

(MO: a venv of its own with ``torch==2.13.0 'nvidia-modelopt[onnx]'``; fp32.onnx from
``dfn export deepfusionnet -o fp32.onnx --no-check``.)

Results accumulate in benchmarks/results/int8_modelopt.json (one entry per model/variant/method/frames).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
RESULTS = OUT / "int8_modelopt.json"
DATA = REPO.parent / "shared" / "data" / "lol-v1" / "train"
PROJECT_PY = REPO / ".venv" / "bin" / "python"
POLYGRAPHY = REPO / ".venv" / "bin" / "polygraphy"
CALIB_SIZE = (320, 240)
MULTIPLE = 8
CHECK_COUNT = 16
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VARIANTS = ("defaults", "excl", "excl-fp32", "conv-fp16", "conv-fp32")


def list_images(folder: Path) -> list[Path]:
    """As ``deepfusionnet.runtime.measure.pairs.list_images``: recursive, sorted, hidden files skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file())


def spread(paths: list[Path], count: int, skip: list[Path] = ()) -> list[Path]:
    """As ``deepfusionnet.export.precision.calibration_images``."""
    skipped = set(skip)
    paths = [p for p in paths if p not in skipped]
    if count and len(paths) > count:
        idx = np.linspace(0, len(paths) - 1, count).round().astype(int)
        paths = [paths[i] for i in sorted(set(idx))]
    return paths


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: not readable as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_tensor(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """uint8 HWC -> float32 NCHW in [0, 1], mirror-padded at the bottom/right to ``multiple``."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1 / 255)
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="symmetric") if ph or pw else x


def calibration_frame(path: Path, width: int, height: int, multiple: int) -> np.ndarray:
    """As ``deepfusionnet.export.precision.calibration_frame``: cover-resize, centre-crop, pad."""
    import cv2

    img = read_rgb(path)
    h, w = img.shape[:2]
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return to_tensor(np.ascontiguousarray(img[y0:y0 + height, x0:x0 + width]), multiple)


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.x64quantprecision", "1")  # exact INT8 on CPUs without VNNI
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_frames(path: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    sess = session(path)
    name = sess.get_inputs()[0].name
    dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    return [np.asarray(sess.run(None, {name: f.astype(dtype)})[0], dtype=np.float32) for f in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10.0 * np.log10(1.0 / mse))


def exclusions(model: str, fp32: Path, sidecar: Path | None) -> tuple[list[str], str]:
    """The nodes the project's INT8 route keeps float: the sidecar's list when it is this model's,
    else ``default_int8_exclusions`` run under the project's venv (it needs no torch, the venv has it)."""
    if sidecar is not None and sidecar.is_file():
        info = json.loads(sidecar.read_text())
        names = info.get("calibration", {}).get("excluded_nodes")
        if names and info.get("model") == model:
            return sorted(names), f"{sidecar} calibration.excluded_nodes (sha256 {info.get('onnx_sha256', '?')[:12]})"
    code = ("import json, sys, onnx; from deepfusionnet.export.precision import default_int8_exclusions; "
            "print(json.dumps(default_int8_exclusions(onnx.load(sys.argv[1]).graph)))")
    out = subprocess.run([str(PROJECT_PY), "-c", code, str(fp32)], check=True, capture_output=True, text=True)
    return sorted(json.loads(out.stdout)), "deepfusionnet.export.precision.default_int8_exclusions"


def tensor_types(model) -> dict[str, int]:
    import onnx

    types = {i.name: i.data_type for i in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types; the initializer/Q types still count
        print(f"  (shape inference failed: {str(exc)[:120]})", flush=True)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
        if n.op_type == "QuantizeLinear" and n.output[0] not in types:
            zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
            types[n.output[0]] = types.get(zp, onnx.TensorProto.UINT8) if zp else onnx.TensorProto.UINT8
    return types


def structure(path: Path) -> dict:
    """What the Q/DQ graph at ``path`` quantized, and how."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: next(a.t for a in n.attribute if a.name == "value")
              for n in g.node if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)}

    def const(name):
        t = inits.get(name) if name in inits else consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    prod = {o: n for n in g.node for o in n.output}
    types = tensor_types(model)
    bits = {TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT4: 4, TensorProto.UINT4: 4,
            TensorProto.INT16: 16, TensorProto.UINT16: 16, TensorProto.INT32: 32, TensorProto.FLOAT8E4M3FN: 8}
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]

    def is_weight(n) -> bool:
        src = n.input[0]
        if src in inits or src in consts:
            return True
        p = prod.get(src)
        return p is not None and p.op_type == "QuantizeLinear" and (p.input[0] in inits or p.input[0] in consts)

    wide = []
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            t = types.get(n.input[0])
            if t is not None and bits.get(t, 99) > 8:
                wide.append({"node": n.name, "input": n.input[0], "dtype": TensorProto.DataType.Name(t)})
    nonzero_zp = sum(1 for n in qdq if len(n.input) > 2 and n.input[2]
                     and (z := const(n.input[2])) is not None and np.any(z != 0))
    act_per_channel = [n.name for n in qdq if not is_weight(n)
                       and (s := const(n.input[1])) is not None and s.size > 1]
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in g.node if n.op_type == "Conv"]
    conv_q = [n.name for n in convs if len(n.input) > 1 and n.input[1] in dq_out]
    readers: dict[str, int] = {}
    act_readers: dict[str, int] = {}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(i in dq_out for i in n.input):
            readers[n.op_type] = readers.get(n.op_type, 0) + 1
            if any(i in dq_out and not is_weight(prod[i]) for i in n.input):
                act_readers[n.op_type] = act_readers.get(n.op_type, 0) + 1
    q_dtypes = sorted({TensorProto.DataType.Name(types[n.output[0]]) for n in qdq
                       if n.op_type == "QuantizeLinear" and n.output[0] in types})
    fp16 = sum(1 for t in types.values() if t == TensorProto.FLOAT16)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    io = {"inputs": [(i.name, TensorProto.DataType.Name(i.type.tensor_type.elem_type)) for i in g.input
                     if i.name not in inits],
          "outputs": [(o.name, TensorProto.DataType.Name(o.type.tensor_type.elem_type)) for o in g.output]}
    return {
        "opset": opset, "nodes": len(g.node), "convs": len(convs), "convs_quantized": len(conv_q),
        "convs_float": sorted(n.name for n in convs if n.name not in set(conv_q)),
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in g.node),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in g.node),
        "dq_inputs_wider_than_8_bits": len(wide), "dq_wide": wide[:20],
        "zero_points_nonzero": nonzero_zp, "activation_qdq_per_channel": len(act_per_channel),
        "activation_qdq_per_channel_nodes": act_per_channel[:20],
        "ops_reading_dq": readers, "ops_reading_activation_dq": act_readers, "q_output_dtypes": q_dtypes,
        "fp16_tensors": fp16, "casts": sum(n.op_type == "Cast" for n in g.node), **io,
    }


def lint(path: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([str(POLYGRAPHY), "check", "lint", str(path)], check=False, capture_output=True,
                       text=True)
    text = (p.stdout + p.stderr).strip().splitlines()
    keep = [ln for ln in text if re.search(r"\[(E|W)\]|PASSED|FAILED|error|Error", ln)]
    return {"pass": p.returncode == 0, "rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "lines": (keep or text)[-12:]}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}}


def save_results(data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, RESULTS)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("nvidia-modelopt", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy", "opencv-python-headless",
                "cupy-cuda12x", "onnx-graphsurgeon", "polygraphy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name"))
    except (StopIteration, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def parity(out: Path, fp32: Path, calib_paths: list[Path], calib_dir: Path, check_dirs: list[Path]) -> dict:
    """PSNR of ``out`` against ``fp32`` on 16 frames per folder (calibration frames left out), in this process."""
    import onnxruntime as ort

    result = {}
    for cdir in check_dirs:
        skip = calib_paths if cdir.resolve() == calib_dir.resolve() else []
        checks = spread(list_images(cdir), CHECK_COUNT, skip=skip)
        frames = [to_tensor(read_rgb(p), MULTIPLE) for p in checks]
        t0 = time.perf_counter()
        ref = run_frames(fp32, frames)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = run_frames(out, frames)
        t_got = time.perf_counter() - t0
        db = [psnr(r, o) for r, o in zip(ref, got, strict=True)]
        worst = int(np.argmin(db))
        result[cdir.name] = {
            "dir": str(cdir), "frames": [p.name for p in checks], "size": list(frames[0].shape[-2:][::-1]),
            "psnr_db": [round(d, 3) for d in db], "worst_db": round(min(db), 3),
            "mean_db": round(float(np.mean(db)), 3), "worst_frame": checks[worst].name,
            "fp32_run_s": round(t_ref, 1), "int8_run_s": round(t_got, 1),
            "disjoint_from_calibration": not set(checks) & set(calib_paths), "onnxruntime": ort.__version__,
        }
        print(f"  parity on {cdir.name} (onnxruntime {ort.__version__}): worst {min(db):.2f} dB "
              f"({checks[worst].name}), mean {np.mean(db):.2f} [fp32 {t_ref:.0f} s, int8 {t_got:.0f} s]",
              file=sys.stderr, flush=True)
    return result


def parity_via(python: str, out: Path, fp32: Path, calib_dir: Path, frames: int, check_dirs: list[Path]) -> dict:
    """:func:`parity` run by another interpreter (the project's venv: its onnxruntime, as the project runs)."""
    cmd = [python, __file__, "parity", "--fp32", str(fp32), "--int8", str(out), "--calib-dir", str(calib_dir),
           "--frames", str(frames), *(a for d in check_dirs for a in ("--check-dir", str(d)))]
    p = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(out: Path, fp32: Path, calib_paths: list[Path], calib_dir: Path, check_dirs: list[Path],
            parity_python: str | None = None) -> dict:
    """Structure, lint and parity of the INT8 graph ``out`` against ``fp32``."""
    entry: dict = {"structure": structure(out)}
    s = entry["structure"]
    print(f"  convs quantized {s['convs_quantized']}/{s['convs']}, DQ>8bit {s['dq_inputs_wider_than_8_bits']}, "
          f"zp!=0 {s['zero_points_nonzero']}, act per-channel {s['activation_qdq_per_channel']}, "
          f"readers {s['ops_reading_dq']}", flush=True)
    entry["lint"] = lint(out)
    print(f"  lint pass={entry['lint']['pass']} ({entry['lint']['seconds']} s)", flush=True)
    if parity_python:
        entry["parity"] = parity_via(parity_python, out, fp32, calib_dir, len(calib_paths), check_dirs)
    else:
        entry["parity"] = parity(out, fp32, calib_paths, calib_dir, check_dirs)
    return entry


def cmd_parity(args) -> None:
    """Print :func:`parity` as one JSON line (what :func:`parity_via` reads)."""
    calib_dir = Path(args.calib_dir)
    result = parity(Path(args.int8), Path(args.fp32), spread(list_images(calib_dir), args.frames), calib_dir,
                    [Path(d) for d in args.check_dir] if args.check_dir else [calib_dir])
    print(json.dumps(result))


def cmd_reparity(args) -> None:
    """Measure the parity of graphs already in the JSON again with ``--python`` (their files must still exist);
    the earlier numbers move to ``parity_earlier``."""
    data = load_results()
    for group in ("runs", "reference"):
        for key, r in data.get(group, {}).items():
            out = Path(r.get("output") or r["graph"])
            if not out.is_file() or (args.only and args.only not in key):
                continue
            old = r["parity"]
            first = next(iter(old.values()))
            calib_dir = Path(r["calibration"]["dir"]) if "calibration" in r else \
                DATA / ("high" if r["model"].endswith("-sr") else "low")
            frames = r.get("frames") or r.get("calibration_frames_assumed", 32)
            if first.get("onnxruntime") and first["onnxruntime"] == args.version:
                continue
            print(f"{key}: parity again with {args.python}", flush=True)
            r["parity"] = parity_via(args.python, out, Path(r["fp32_input"]), calib_dir, frames,
                                     [Path(v["dir"]) for v in old.values()])
            r.setdefault("parity_earlier", old)
            save_results(data)


def stamp(data: dict) -> None:
    data["versions"] = versions()
    data["machine"] = machine()
    data["updated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_run(args) -> None:
    import onnx

    model_name, fp32 = args.model, Path(args.fp32).resolve()
    scale = 2 if model_name.endswith("-sr") else 1
    calib_dir = Path(args.calib_dir) if args.calib_dir else DATA / ("low" if scale == 1 else "high")
    check_dirs = [Path(d) for d in args.check_dir] if args.check_dir else [calib_dir]
    extra = "".join(f"/{tag}-{v}" for tag, v in (("no-q", args.op_types_to_exclude),
                                                 ("fp32-ops", args.op_types_to_exclude_fp16)) if v)
    work = Path(args.work) / f"{model_name}-{args.variant}-{args.method}-n{args.frames}{extra.replace('/', '-')}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    src = work / "fp32.onnx"
    shutil.copyfile(fp32, src)  # ModelOpt writes its intermediate files beside its input
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    t0 = time.perf_counter()
    calib_paths = spread(list_images(calib_dir), args.frames)
    cw, ch = CALIB_SIZE
    calib = np.concatenate([calibration_frame(p, cw, ch, MULTIPLE) for p in calib_paths])
    t_frames = time.perf_counter() - t0

    kwargs = {"quantize_mode": "int8", "calibration_method": args.method, "calibration_data": calib,
              "calibration_shapes": f"{input_name}:1x3x{calib.shape[2]}x{calib.shape[3]}",
              "calibration_eps": ["cpu"], "output_path": str(work / "int8.onnx"), "log_level": "INFO",
              "log_file": str(work / "modelopt.log")}
    excluded, excl_source = [], None
    if args.variant != "defaults":
        excluded, excl_source = exclusions(model_name, fp32, Path(args.sidecar) if args.sidecar else None)
        names = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
        missing = [n for n in excluded if n not in names]
        if missing:
            raise SystemExit(f"{len(missing)} excluded node(s) not in {fp32}: {missing[:5]}")
        # nodes_to_exclude is a list of regular expressions matched with re.match (a prefix match):
        # escape and anchor each name so '/stem/Conv' does not also exclude '/stem/Conv_1'.
        kwargs["nodes_to_exclude"] = [f"{re.escape(n)}$" for n in excluded]
    if args.variant.startswith("conv-"):
        kwargs["op_types_to_quantize"] = ["Conv"]
    if args.variant.endswith("-fp32"):
        kwargs["high_precision_dtype"] = "fp32"
    if args.op_types_to_exclude:
        kwargs["op_types_to_exclude"] = args.op_types_to_exclude.split(",")
    if args.op_types_to_exclude_fp16:
        kwargs["op_types_to_exclude_fp16"] = args.op_types_to_exclude_fp16.split(",")
    from modelopt.onnx.quantization import quantize

    print(f"{model_name} {args.variant} {args.method}: quantizing with {len(calib_paths)} frames "
          f"{tuple(calib.shape)}, {len(excluded)} nodes excluded", flush=True)
    t0 = time.perf_counter()
    quantize(str(src), **kwargs)
    t_quant = time.perf_counter() - t0
    out = work / "int8.onnx"
    print(f"  quantize: {t_quant:.1f} s (+{t_frames:.1f} s reading frames)", flush=True)

    entry = {
        "model": model_name, "variant": args.variant, "method": args.method, "frames": len(calib_paths),
        "calibration": {"dir": str(calib_dir), "size": [cw, ch], "frames": [p.name for p in calib_paths]},
        "quantize_kwargs": {k: v for k, v in kwargs.items() if k not in ("calibration_data", "nodes_to_exclude")},
        "nodes_to_exclude": {"count": len(excluded), "source": excl_source} if excluded else None,
        "quantize_s": round(t_quant, 2), "read_frames_s": round(t_frames, 2),
        "output": str(out), "output_bytes": out.stat().st_size, "fp32_input": str(fp32),
    }
    entry.update(measure(out, fp32, calib_paths, calib_dir, check_dirs, args.parity_python or None))

    data = load_results()
    data.setdefault("runs", {})[f"{model_name}/{args.variant}/{args.method}/n{len(calib_paths)}{extra}"] = entry
    stamp(data)
    save_results(data)


def cmd_measure(args) -> None:
    """Measure an INT8 graph made elsewhere (the project's ONNX Runtime route) the same way, for reference."""
    import hashlib

    model_name, fp32, out = args.model, Path(args.fp32).resolve(), Path(args.int8).resolve()
    calib_dir = Path(args.calib_dir) if args.calib_dir else DATA / ("low" if not model_name.endswith("-sr") else "high")
    check_dirs = [Path(d) for d in args.check_dir] if args.check_dir else [calib_dir]
    calib_paths = spread(list_images(calib_dir), args.frames)
    print(f"{model_name}: measuring {out}", flush=True)
    sidecar = out.with_name(out.name + ".json")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    entry = {"model": model_name, "graph": str(out), "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
             "sidecar_created": info.get("created"), "sidecar_calibration": {
                 k: v for k, v in info.get("calibration", {}).items() if k not in ("excluded_nodes", "fallback")},
             "stages_kept_float": info.get("calibration", {}).get("fallback", {}).get("stages_kept_float"),
             "fp32_input": str(fp32), "calibration_frames_assumed": args.frames}
    entry.update(measure(out, fp32, calib_paths, calib_dir, check_dirs, args.parity_python or None))
    data = load_results()
    data.setdefault("reference", {})[f"{model_name}/{args.label}"] = entry
    stamp(data)
    save_results(data)


def cmd_fp16_time(args) -> None:
    """Time the project's own FP16 export (the yardstick the ratio column divides by)."""
    cmd = [str(REPO / ".venv" / "bin" / "dfn"), "export", args.model, "-o", str(Path(args.work) / "fp16.onnx"),
           "--precision", "fp16", "--dynamic", "--check-data", str(REPO / "samples" / "night")]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    print((p.stdout + p.stderr)[-2000:])
    if p.returncode:
        raise SystemExit(f"FP16 export failed (rc {p.returncode})")
    data = load_results()
    data.setdefault("fp16_export", {})[args.model] = {
        "command": "dfn " + " ".join(cmd[1:]).replace(str(REPO) + "/", ""), "wall_s": round(wall, 2),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    save_results(data)
    print(f"FP16 export of {args.model}: {wall:.1f} s")


def label(r: dict) -> str:
    kw = r.get("quantize_kwargs", {})
    out = r["variant"]
    if kw.get("op_types_to_exclude"):
        out += f", not quantized: {'/'.join(kw['op_types_to_exclude'])}"
    if kw.get("op_types_to_exclude_fp16"):
        out += f", kept FP32: {'/'.join(kw['op_types_to_exclude_fp16'])}"
    return out


def cmd_report(args) -> None:
    data = load_results()
    runs, refs = data.get("runs", {}), data.get("reference", {})
    fp16 = data.get("fp16_export", {})
    ver, mach = data.get("versions", {}), data.get("machine", {})
    lines = [
        "# ModelOpt ONNX INT8 PTQ on the project's FP32 graphs (#31)", "",
        (f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores shared with other jobs (every run "
         f"under `nice -n 10`, one at a time: times are noisy, about ±2x); {mach.get('platform', '')}. "
         f"Date: {data.get('updated', '?')}."),
        (f"nvidia-modelopt {ver.get('nvidia-modelopt', '?')}, onnxruntime-gpu {ver.get('onnxruntime-gpu', '?')} "
         f"(its CPU provider; no GPU), onnx {ver.get('onnx', '?')}, numpy {ver.get('numpy', '?')}, in a venv of "
         "its own; lint: the project venv's `polygraphy check lint`."), "",
        ("Produced by `benchmarks/int8_modelopt.py` (see its docstring). `quantize s`: wall time of the "
         "`modelopt.onnx.quantization.quantize` call (symmetric INT8, calibration_eps ['cpu'], the 32 "
         "calibration frames already in memory). `× FP16`: that divided by the wall time of the project's "
         "`dfn export MODEL --precision fp16 --dynamic --check-data samples/night` in the same sitting. "
         "Parity: PSNR against the FP32 graph, outputs clipped to [0, 1], on 16 frames of the named folder "
         "that calibration did not use, at their own size (600x400), both graphs on ONNX Runtime CPU "
         "(`session.x64quantprecision`=1). `DQ>8 bit`: DequantizeLinear nodes reading more than 8 bits "
         "(INT32 biases). `act per-ch`: Q/DQ on activations with per-channel scales. `zp≠0`: nonzero zero "
         "points. Variants: `defaults` = ModelOpt's own op choice, FP16 for the rest; `excl` = defaults with "
         "nodes_to_exclude = the convs the project's route keeps float; `excl-fp32` = excl with FP32 for the "
         "rest; `conv-fp16` = excl restricted to convs (op_types_to_quantize ['Conv']), FP16 for the rest; "
         "`conv-fp32` = the same with FP32 for the rest (the route's placement, ModelOpt's calibration)."), ""]
    models = list(dict.fromkeys([*(r["model"] for r in runs.values()), *(r["model"] for r in refs.values())]))
    for model in models:
        f16 = fp16.get(model, {}).get("wall_s")
        mine = sorted((r for r in runs.values() if r["model"] == model),
                      key=lambda r: (VARIANTS.index(r["variant"]), label(r), r["method"], r["frames"]))
        ref_rows = [(k.split("/", 1)[1], r) for k, r in refs.items() if r["model"] == model]
        sets = list(dict.fromkeys(k for r in [*mine, *(r for _, r in ref_rows)] for k in r.get("parity", {})))
        lines += [f"## {model}", "", f"Project FP16 export: {f16} s." if f16 else "FP16 export: not timed.", ""]
        head = ["variant", "calib", "quantize s", "× FP16", "convs INT8/total"]
        for k in sets:
            head += [f"worst dB ({k})", f"mean dB ({k})"]
        head += ["DQ>8 bit", "zp≠0", "act per-ch", "other ops reading a DQ", "FP16 tensors", "lint"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def cells(r: dict, sets: list[str] = sets) -> list[str]:
            s = r["structure"]
            out = [f"{s['convs_quantized']}/{s['convs']}"]
            for k in sets:
                p = r.get("parity", {}).get(k)
                out += [f"{p['worst_db']:.2f}", f"{p['mean_db']:.2f}"] if p else ["–", "–"]
            other = ", ".join(f"{op} {c}" for op, c in sorted(s["ops_reading_dq"].items()) if op != "Conv")
            return [*out, str(s["dq_inputs_wider_than_8_bits"]), str(s["zero_points_nonzero"]),
                    str(s["activation_qdq_per_channel"]), other or "none", str(s["fp16_tensors"]),
                    "pass" if r["lint"]["pass"] else f"FAIL (rc {r['lint']['rc']})"]

        for r in mine:
            t = r["quantize_s"]
            lines.append("| " + " | ".join([label(r), f"{r['method']} ×{r['frames']}", f"{t:.1f}",
                                              f"{t / f16:.2f}" if f16 else "–", *cells(r)]) + " |")
        for name, r in ref_rows:
            cal = r.get("sidecar_calibration", {})
            lines.append("| " + " | ".join([f"reference: {name} (`{Path(r['graph']).name}`, sha {r['sha256'][:12]})",
                                              f"{cal.get('method', '?')} ×{cal.get('count', '?')}", "–", "–",
                                              *cells(r)]) + " |")
        lines.append("")
        excl = next((r["nodes_to_exclude"] for r in mine if r.get("nodes_to_exclude")), None)
        if excl:
            lines += [f"Excluded nodes in the non-default variants ({excl['count']}): {excl['source']}.", ""]
    notes = data.get("notes", [])
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    (OUT / "int8_modelopt.md").write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="quantize one graph with ModelOpt and measure it")
    r.add_argument("--model", required=True, choices=["deepfusionnet", "deepfusionnet-sr"])
    r.add_argument("--fp32", required=True, help="FP32 graph from `dfn export MODEL --dynamic --no-check`")
    r.add_argument("--variant", choices=VARIANTS, default="defaults")
    r.add_argument("--method", choices=["entropy", "max"], default="entropy")
    r.add_argument("--op-types-to-exclude", help="comma-separated op types ModelOpt must not quantize")
    r.add_argument("--op-types-to-exclude-fp16", help="comma-separated op types kept FP32 in FP16 variants")
    r.add_argument("--frames", type=int, default=32, help="calibration frames (default 32, as the project)")
    r.add_argument("--calib-dir", help="default: LOL-v1 train/low (train/high for the SR model)")
    r.add_argument("--check-dir", action="append", help="parity folder(s); default: the calibration folder")
    r.add_argument("--sidecar", default=None,
                   help="INT8 sidecar whose calibration.excluded_nodes the 'excl' variants use")
    r.add_argument("--work", default="runs/int8-modelopt", help="scratch folder for the graphs")
    f = sub.add_parser("fp16-time", help="time the project's FP16 export")
    f.add_argument("--model", default="deepfusionnet")
    f.add_argument("--work", default="runs/int8-modelopt")
    m = sub.add_parser("measure", help="measure an INT8 graph made elsewhere the same way (reference row)")
    m.add_argument("--model", required=True, choices=["deepfusionnet", "deepfusionnet-sr"])
    m.add_argument("--fp32", required=True)
    m.add_argument("--int8", required=True)
    m.add_argument("--label", default="onnxruntime-route")
    m.add_argument("--frames", type=int, default=32, help="calibration frames it used (left out of parity)")
    m.add_argument("--calib-dir")
    m.add_argument("--check-dir", action="append")
    for sp in (r, m):
        sp.add_argument("--parity-python", default=str(PROJECT_PY) if PROJECT_PY.exists() else "",
                        help="interpreter whose onnxruntime measures parity (default: the project's venv; "
                             "onnxruntime 1.24's CPU QuantizeLinear truncates FP16 inputs instead of rounding "
                             "them); empty: this one")
    pp = sub.add_parser("parity", help="(internal) parity of one graph as a JSON line")
    pp.add_argument("--fp32", required=True)
    pp.add_argument("--int8", required=True)
    pp.add_argument("--calib-dir", required=True)
    pp.add_argument("--frames", type=int, default=32)
    pp.add_argument("--check-dir", action="append")
    rp = sub.add_parser("reparity", help="measure parity of the recorded graphs again with another onnxruntime")
    rp.add_argument("--python", default=str(PROJECT_PY))
    rp.add_argument("--version", help="skip entries already measured with this onnxruntime version")
    rp.add_argument("--only", help="only entries whose key contains this")
    sub.add_parser("report", help="write results/int8_modelopt.md from the JSON")
    args = ap.parse_args(argv)
    {"run": cmd_run, "measure": cmd_measure, "parity": cmd_parity, "reparity": cmd_reparity,
     "fp16-time": cmd_fp16_time, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
