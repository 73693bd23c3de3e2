"""Hardware check for a lent CUDA machine: what the CPU test doubles cannot show.

Run it on a machine with an NVIDIA GPU (no network needed; under 5 minutes on one GPU):

    python benchmarks/gpu_check.py --out gpu_check.json

(a) The CUDA layer (runtime/backends/cuda.py) through the real cuda-bindings: pinned host buffers, H2D/D2H
    copies, the raw stream handle TensorRT would get, a thread-local stream capture of the copies replayed
    as a CUDA graph (its results must follow each new input), another thread's cudaMalloc during that
    capture, and the clean-up after a capture that fails (the pending error cleared).
(b) The PyTorch backend (train/torch_backend.py) with the shipped weights on the GPU in FP32 (TF32 off)
    and FP16, against its own CPU output on the shipped sample images.
(c) Where ``import tensorrt`` works: FP32/FP16/INT8 engines of the shipped model built by
    ``engine_from_onnx`` and compared with ONNX Runtime FP32, plus CUDA-graph replay against plain
    execution; else it prints "TensorRT: not installed, skipped".

Needs: numpy, OpenCV, onnxruntime; cuda-bindings for (a); torch with CUDA for (b); tensorrt, torch and
onnx for (c). A part whose package is missing is reported as skipped, not failed.

The JSON written to ``--out`` holds the date, the device name, package versions and every measurement.
Exit status: 0 every check that could run passed, 1 a check failed, 4 no CUDA GPU is visible (nothing
was checked; the JSON says so).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a bare checkout: deepfusionnet/ maps runtime/, train/, export/ itself

NO_CUDA = 4
DEVICE = "cuda"  # torch's device for part (b)
SAMPLES = REPO / "samples" / "night"
CROP = (256, 384)  # (H, W) of the frames compared; multiples of the model's 8
ENGINE_SIZE = (256, 256)  # (H, W) of the TensorRT test engines
TORCH_MIN_DB = {"fp32": 60.0, "fp16": 40.0}  # against the CPU FP32 output
TRT_MIN_DB = {"fp32": 50.0, "fp16": 45.0, "int8": 32.0}  # as tests/test_tensorrt_gpu.py


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- finding a GPU ---------------------------------------------------------------------------------------
def cuda_bindings_runtime() -> tuple[Any, str]:
    """``cuda.bindings.runtime`` when installed and it sees a GPU; else (None, why)."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError as exc:
        return None, f"cuda-bindings not installed ({exc})"
    err, count = rt.cudaGetDeviceCount()
    if int(getattr(err, "value", err)) != 0 or count < 1:
        return None, f"cuda-bindings sees no GPU ({getattr(err, 'name', err)})"
    return rt, ""


def torch_cuda() -> tuple[Any, str]:
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not installed ({exc})"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA GPU"
    return torch, ""


# -- (a) the CUDA layer ----------------------------------------------------------------------------------
def check(result: dict, name: str, ok: bool, **detail: Any) -> bool:
    result.setdefault("checks", {})[name] = {"ok": bool(ok), **detail}
    say(f"  {'ok  ' if ok else 'FAIL'} {name} {detail if detail else ''}")
    return bool(ok)


def _fill(buf: Any, rng: np.random.Generator) -> np.ndarray:
    data = rng.random(buf.nbytes // 4, dtype=np.float32)
    buf.array[:] = data.view(np.uint8)
    return data


def _floats(buf: Any) -> np.ndarray:
    return buf.array.view(np.float32).copy()


def cuda_layer(nbytes: int = 1 << 22) -> dict:
    """Part (a): the CUDA layer on the real GPU through cuda-bindings."""
    from deepfusionnet.runtime.backends.cuda import CudaBindings

    cb = CudaBindings(device=0)
    res: dict = {"device": cb.device_info()}
    rng = np.random.default_rng(0)
    bufs = Bufs(cb.host_alloc(nbytes), cb.host_alloc(nbytes), cb.device_alloc(nbytes))
    stream = cb.stream_create()
    try:
        _stream_handle(cb, stream, res)
        _round_trip(cb, stream, bufs, rng, res, "pinned_h2d_d2h_round_trip")
        _graph_replay(cb, stream, bufs, rng, res)
        _other_thread_during_capture(cb, stream, res)
        _failed_capture_cleanup(cb, stream, res)
        _round_trip(cb, stream, bufs, rng, res, "copies_after_failed_capture")
    finally:
        cb.host_free(bufs.h_in)
        cb.host_free(bufs.h_out)
        cb.device_free(bufs.dev)
        cb.stream_destroy(stream)
    res["ok"] = all(c["ok"] for c in res["checks"].values())
    return res


class Bufs:
    def __init__(self, h_in: Any, h_out: Any, dev: Any) -> None:
        self.h_in, self.h_out, self.dev = h_in, h_out, dev


def _code(err: Any) -> int:
    return int(getattr(err, "value", err))


def _stream_handle(cb: Any, stream: Any, res: dict) -> None:
    """The int TensorRT gets must be a live stream: cudaStreamQuery on it, rebuilt from the int, succeeds."""
    handle = cb.stream_handle(stream)
    code = _code(cb.rt.cudaStreamQuery(cb.rt.cudaStream_t(handle))[0])
    check(res, "stream_handle_is_a_live_stream", code in (0, 600), handle=hex(handle), query=code,
          get_ptr_differs=int(stream.getPtr()) != handle)  # 600: cudaErrorNotReady, also a live stream


def _copy_through(cb: Any, stream: Any, bufs: Bufs) -> None:
    cb.copy_htod_async(bufs.dev, bufs.h_in, bufs.h_in.nbytes, stream)
    cb.copy_dtoh_async(bufs.h_out, bufs.dev, bufs.h_out.nbytes, stream)


def _round_trip(cb: Any, stream: Any, bufs: Bufs, rng: np.random.Generator, res: dict, name: str) -> None:
    data = _fill(bufs.h_in, rng)
    bufs.h_out.array[:] = 0
    _copy_through(cb, stream, bufs)
    cb.synchronize(stream)
    check(res, name, np.array_equal(_floats(bufs.h_out), data), bytes=bufs.h_in.nbytes)


def _graph_replay(cb: Any, stream: Any, bufs: Bufs, rng: np.random.Generator, res: dict) -> None:
    """Capture H2D + D2H once (thread-local mode), replay it on three inputs: each output is its input."""
    cb.begin_capture(stream)
    try:
        _copy_through(cb, stream, bufs)
    except BaseException:
        cb.abort_capture(stream)
        raise
    graph = cb.end_capture(stream)
    try:
        outs, follows, times = [], True, []
        for _ in range(3):
            data = _fill(bufs.h_in, rng)
            bufs.h_out.array[:] = 0
            t0 = time.perf_counter()
            cb.graph_launch(graph, stream)
            cb.synchronize(stream)
            times.append(round((time.perf_counter() - t0) * 1e3, 3))
            outs.append(_floats(bufs.h_out))
            follows &= np.array_equal(outs[-1], data)
    finally:
        cb.graph_destroy(graph)
    changed = not np.array_equal(outs[0], outs[1])
    check(res, "graph_replay_follows_input", follows and changed, replay_ms=times)


def _other_thread_during_capture(cb: Any, stream: Any, res: dict) -> None:
    """Thread-local capture leaves other threads free: cudaMalloc there (a "potentially unsafe" call that a
    global-mode capture would refuse) succeeds, and this thread's capture still ends cleanly."""
    other: dict = {}
    cb.begin_capture(stream)
    worker = threading.Thread(target=_alloc_elsewhere, args=(cb, other))
    worker.start()
    worker.join()
    try:
        cb.graph_destroy(cb.end_capture(stream))
        ended = ""
    except Exception as exc:  # CudaError: the capture was broken from outside
        ended = str(exc)
    if other.get("buf") is not None:
        cb.device_free(other["buf"])  # freed after the capture: cudaFree may synchronize the device
    check(res, "other_thread_cudaMalloc_during_threadlocal_capture", other.get("ok", False) and not ended,
          error=other.get("error"), end_capture=ended or "ok")


def _alloc_elsewhere(cb: Any, out: dict) -> None:
    try:
        out["buf"] = cb.device_alloc(1 << 20)
        out["ok"] = True
    except Exception as exc:  # CudaError: recorded, the main thread reports it
        out["ok"], out["error"] = False, str(exc)


def _failed_capture_cleanup(cb: Any, stream: Any, res: dict) -> None:
    """Synchronizing a capturing stream is illegal and invalidates the capture; abort_capture must end it and
    clear the pending error (as trtexec's endCaptureOnError)."""
    cb.begin_capture(stream)
    err = cb.rt.cudaStreamSynchronize(stream)[0]
    cb.abort_capture(stream)
    status = cb.rt.cudaStreamIsCapturing(stream)
    capturing = _code(status[1]) != 0
    last = _code(cb.rt.cudaGetLastError()[0])
    check(res, "failed_capture_is_ended_and_error_cleared", _code(err) != 0 and not capturing and last == 0,
          sync_error=getattr(err, "name", str(err)), still_capturing=capturing, last_error_after=last)


# -- (b) the PyTorch backend -----------------------------------------------------------------------------
def sample_frames(n: int = 2, size: tuple[int, int] = CROP) -> list[np.ndarray]:
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import to_tensor

    paths = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    frames = []
    for p in paths:
        rgb = read_image(p)
        if rgb.shape[0] >= size[0] and rgb.shape[1] >= size[1]:
            frames.append(to_tensor(rgb[: size[0], : size[1]]))
    return frames[:n]


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    from deepfusionnet.runtime.metrics import psnr

    got = got.astype(np.float32)
    finite = bool(np.isfinite(got).all())
    hwc = lambda a: np.clip(np.nan_to_num(a[0]), 0, 1).transpose(1, 2, 0)  # noqa: E731
    db = psnr(hwc(got), hwc(want))
    db = min(float(db), 999.0)  # identical frames give inf, which JSON cannot hold
    return {"psnr_db": round(db, 2), "max_abs": float(np.max(np.abs(np.nan_to_num(got) - want))),
            "finite": finite}


def _torch_gpu_runner(torch: Any, backend_cls: Any, weights: Path, model: Any, dtype: Any) -> Callable:
    """x -> y on the GPU: the backend's own device option once it has one, else the module moved here."""
    if dtype == torch.float32 and "device" in inspect.signature(backend_cls.__init__).parameters:
        be = backend_cls(weights, device=DEVICE)
        return lambda x: be.infer({"input": x})["output"]
    net = copy.deepcopy(model).to(DEVICE, dtype)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = net(torch.from_numpy(x).to(DEVICE, dtype))
        return y.float().cpu().numpy()

    return run


def _full_fp32(torch: Any) -> None:
    """FP32 means FP32: cuDNN's default TF32 convolutions would be a third precision. The fp32_precision
    API (torch 2.9+) where present; mixing it with the legacy allow_tf32 flags is an error there."""
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    except AttributeError:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def torch_backend() -> dict:
    """Part (b): the shipped weights through the PyTorch backend, GPU FP32 / FP16 against CPU FP32."""
    torch, why = torch_cuda()
    if torch is None:
        return {"skipped": why}
    from deepfusionnet.runtime.artifacts import shipped_path
    from deepfusionnet.train.torch_backend import TorchBackend

    _full_fp32(torch)
    weights = shipped_path("deepfusionnet", "weights")
    cpu = TorchBackend(weights)
    res: dict = {"weights": weights.name, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    frames = sample_frames()
    refs = [cpu.infer({"input": x})["output"] for x in frames]
    for prec, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        run = _torch_gpu_runner(torch, TorchBackend, weights, cpu.model, dtype)
        rows = [compare(run(x), ref) for x, ref in zip(frames, refs)]
        worst = min(r["psnr_db"] for r in rows)
        ok = worst >= TORCH_MIN_DB[prec] and all(r["finite"] for r in rows)
        check(res, f"torch_cuda_{prec}_vs_cpu", ok, worst_psnr_db=worst, min_db=TORCH_MIN_DB[prec],
              frames=rows)
    res["ok"] = all(c["ok"] for c in res["checks"].values())
    return res


# -- (c) TensorRT ----------------------------------------------------------------------------------------
def tensorrt_engines(work: Path) -> dict:
    """Part (c): FP32/FP16/INT8 engines against ONNX Runtime FP32, where TensorRT is installed."""
    try:
        import tensorrt
    except ImportError:
        say("TensorRT: not installed, skipped")
        return {"skipped": "TensorRT: not installed"}
    res: dict = {"tensorrt": tensorrt.__version__}
    onnx = _export_precisions(work)
    frames = sample_frames(3, ENGINE_SIZE)
    from deepfusionnet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    ref = OnnxRuntimeBackend(onnx["fp32"], providers=["CPUExecutionProvider"])
    refs = [ref.infer({"input": x})["output"] for x in frames]
    for prec, path in onnx.items():
        _engine_parity(path, work / f"{prec}.engine", prec, frames, refs, res)
    res["ok"] = all(c["ok"] for c in res["checks"].values())
    return res


def _export_precisions(work: Path) -> dict[str, Path]:
    from deepfusionnet.export.pipeline import ExportOptions, export_model

    out = {}
    for prec in ("fp32", "fp16", "int8"):
        out[prec] = work / f"deepfusionnet-{prec}.onnx"
        opts = ExportOptions(precision=prec, size=(ENGINE_SIZE[1], ENGINE_SIZE[0]), check=False,
                             calib_dir=SAMPLES, calib_count=4, fallback_db=0.0)  # samples/ travels along
        export_model("deepfusionnet", out[prec], opts, progress=say)
    return out


def _engine_parity(onnx: Path, engine: Path, prec: str, frames: list, refs: list, res: dict) -> None:
    from deepfusionnet.export.tensorrt import engine_from_onnx
    from deepfusionnet.runtime.backends.tensorrt import TensorRTBackend

    built = engine_from_onnx(onnx, engine)
    plain, graph = TensorRTBackend(engine), TensorRTBackend(engine, cuda_graph=True)
    try:
        rows = [compare(plain.infer({"input": x})["output"], r) for x, r in zip(frames, refs)]
        replay = [graph.infer({"input": x})["output"] for x in frames + frames]  # capture, then replays
        same = all(np.array_equal(a, plain.infer({"input": x})["output"])
                   for a, x in zip(replay, frames + frames))
    finally:
        plain.close()
        graph.close()
    worst = min(r["psnr_db"] for r in rows)
    ok = worst >= TRT_MIN_DB[prec] and all(r["finite"] for r in rows)
    check(res, f"trt_{prec}_vs_onnxruntime_fp32", ok, worst_psnr_db=worst, min_db=TRT_MIN_DB[prec],
          build_s=built.get("build_seconds"), frames=rows)
    check(res, f"trt_{prec}_cuda_graph_equals_plain", same, graphs_kept=graph.cuda_graph)


# -- driver ----------------------------------------------------------------------------------------------
def versions() -> dict:
    out = {"python": platform.python_version()}
    for name, mod in (("numpy", "numpy"), ("onnxruntime", "onnxruntime"), ("torch", "torch"),
                      ("cuda-bindings", "cuda.bindings"), ("tensorrt", "tensorrt")):
        try:
            out[name] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            out[name] = None
    return out


def run_part(name: str, fn: Callable[[], dict]) -> dict:
    """One part; an exception fails that part (with its last line), the others still run."""
    say(f"[{name}]")
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        res = {"ok": False, "error": lines[-1].strip()[:500]}
        say(f"  FAIL {name}: {res['error']}")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def write(out: Path | None, result: dict) -> None:
    text = json.dumps(result, indent=2, default=str) + "\n"
    if out is None:
        print(text, end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    say(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="JSON result file (default: stdout)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the exported graphs and engines")
    args = ap.parse_args(argv)
    result: dict = {"script": "benchmarks/gpu_check.py",
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "host": platform.node(), "versions": versions()}
    rt, why_rt = cuda_bindings_runtime()
    torch, why_torch = torch_cuda()
    if rt is None and torch is None:
        say(f"gpu_check: no CUDA GPU visible ({why_rt}; {why_torch}); nothing checked")
        write(args.out, {**result, "device": None, "status": "no-cuda", "why": f"{why_rt}; {why_torch}"})
        return NO_CUDA
    result["device"] = torch.cuda.get_device_name(0) if torch is not None else _rt_device_name(rt)
    parts = result["parts"] = {}
    parts["cuda_layer"] = run_part("cuda_layer", cuda_layer) if rt is not None else {"skipped": why_rt}
    parts["torch_backend"] = run_part("torch_backend", torch_backend)
    work = args.work or Path(tempfile.mkdtemp(prefix="dfn-gpu-check-"))
    parts["tensorrt"] = run_part("tensorrt", lambda: tensorrt_engines(work))
    failed = [k for k, v in parts.items() if "skipped" not in v and not v.get("ok")]
    result["status"] = "failed: " + ", ".join(failed) if failed else "ok"
    write(args.out, result)
    say(f"gpu_check: {result['status']}")
    return 1 if failed else 0


def _rt_device_name(rt: Any) -> str:
    prop = rt.cudaGetDeviceProperties(0)[1]
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        return bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return str(name)


if __name__ == "__main__":
    sys.exit(main())
