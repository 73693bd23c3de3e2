"""The physical floor: this machine's measured matrix-multiply throughput per precision, and how close a
benchmark row comes to it.

The floor of a precision is the best GFLOP/s (2 x multiply-adds per second; for INT8 integer
operations, counted the same way) of large square matmuls on every core, over the libraries and sizes
that can run it here. A floor is a ceiling, and load on a shared machine only ever slows a run, so each
(library, size) counts its fastest of a few repeats (the median is kept beside it): with the median, a
busy 2-core machine gave floors below what the benchmark rows then reached.

* ``fp32``: numpy's BLAS, ONNX Runtime's MatMul and OpenVINO with ``INFERENCE_PRECISION_HINT=f32``;
* ``bf16``: OpenVINO with the ``bf16`` hint (AMX or AVX512_BF16 kernels), only on CPUs with bf16
  hardware;
* ``int8``: ONNX Runtime's MatMulInteger (u8 x s8 -> s32, its VNNI/AMX kernels) and OpenVINO on a
  FakeQuantize(activations) x int8-weights graph, which its low-precision transformations turn into a
  u8 x i8 matmul.

The ONNX Runtime graphs are written here as a few protobuf fields (the ``onnx`` package is not a
runtime dependency), with the weights as an initializer so ONNX Runtime prepacks them as it would a
model's.

OpenVINO results count only when its runtime graph reports the matmul in that precision (it falls
back silently otherwise); a precision nothing can run says ``"not available (why)"``.

A row's **fraction of the floor** is the time its multiply-adds would take at the floor of the
precision each ran in, over the inference time it took: for a row in one precision, achieved
GFLOP/s / floor GFLOP/s; for a mixed row (INT8 convs + BF16 rest) the floors weight its parts.
Only convolution MACs are counted (:mod:`.macs`), so the fraction is an upper bound on how well the
convolutions run and a lower bound on how busy the CPU was.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable

from deepfusionnet.runtime.measure.machine import cpu_cores, isa_features, library_versions, machine_key

VERSION = 4  # bump when the method changes, so cached floors are measured again
# Square sizes per precision: BF16 ran faster at 2048 than at 4096 in each of 3 tries on an AMX Xeon, and
# INT8's best figures (ONNX Runtime) came at 4096 (benchmarks/experiments.md, 2026-12-05, session 27).
SIZES = {"fp32": (2048,), "bf16": (2048,), "int8": (4096,)}
REPEATS = 5
NOT_AVAILABLE = "not available"
BF16_ISA = ("avx512_bf16", "amx_bf16", "bf16")


class _Unavailable(Exception):
    """This library cannot run this precision here (the message says why)."""


def _gflops(fn: Callable[[], object], n: int, repeats: int) -> tuple[float, float]:
    """(best, median) GFLOP/s of ``repeats`` calls of an n x n x n matmul, after a warm-up call."""
    fn()  # warm-up: first-call allocation, weight repacking
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9, 2 * n**3 / statistics.median(times) / 1e9


def _numpy_fp32(n: int, repeats: int) -> tuple[float, float]:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    return _gflops(lambda: a @ b, n, repeats)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb(field: int, payload: bytes | str | int) -> bytes:
    """One protobuf field: an int as a varint, bytes/str length-delimited."""
    if isinstance(payload, int):
        return _varint(field << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _onnx_matmul(op: str, n: int, a_type: int, w, out_type: int) -> bytes:
    """ModelProto of ``y = op(a, w)`` (onnx.proto field numbers), ``w`` an initializer."""
    def value_info(name: str, elem: int) -> bytes:
        shape = b"".join(_pb(1, _pb(1, n)) for _ in range(2))
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, elem) + _pb(2, shape)))

    w_type = 3 if w.dtype.kind == "i" else 1  # TensorProto INT8 / FLOAT
    init = _pb(1, n) + _pb(1, n) + _pb(2, w_type) + _pb(8, "w") + _pb(9, w.tobytes())
    graph = (_pb(1, _pb(1, "a") + _pb(1, "w") + _pb(2, "y") + _pb(4, op)) + _pb(2, "floor") + _pb(5, init)
             + _pb(11, value_info("a", a_type)) + _pb(12, value_info("y", out_type)))
    return _pb(1, 8) + _pb(8, _pb(1, "") + _pb(2, 13)) + _pb(7, graph)


def _onnxruntime(n: int, precision: str, repeats: int) -> tuple[float, float]:
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    if precision == "int8":  # TensorProto UINT8 in, INT32 out
        a, w = rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-127, 128, (n, n), dtype=np.int8)
        proto = _onnx_matmul("MatMulInteger", n, 2, w, 6)
    else:
        a, w = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        proto = _onnx_matmul("MatMul", n, 1, w, 1)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = cpu_cores()  # its default counts physical cores; the floor is every core
    session = ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])
    return _gflops(lambda: session.run(None, {"a": a}), n, repeats)


def _openvino_graph(n: int, precision: str):
    """``x @ W`` with constant weights; for int8, fake-quantized activations times int8 weights."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([n, n], np.float32, name="x")
    rng = np.random.default_rng(0)
    if precision == "int8":
        lo, hi = np.float32(-1), np.float32(1)
        xq = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        w = ops.convert(ops.constant(rng.integers(-127, 128, (n, n), dtype=np.int8)), "f32")
        y = ops.matmul(xq, ops.multiply(w, ops.constant(np.full((1, n), 0.01, np.float32))), False, True)
    else:
        y = ops.matmul(x, ops.constant(rng.standard_normal((n, n)).astype(np.float32)), False, False)
    return ov.Model([y], [x], f"floor_{precision}")


# What the runtime graph must report for the matmul (OpenVINO's runtimePrecision names).
_RUNTIME = {"fp32": ("f32",), "bf16": ("bf16",), "int8": ("u8", "i8")}


def _openvino(n: int, precision: str, repeats: int) -> tuple[float, float]:
    try:
        import numpy as np
        import openvino as ov
    except ImportError:
        raise _Unavailable("openvino not installed") from None
    hint = "bf16" if precision == "bf16" else "f32"
    compiled = ov.Core().compile_model(_openvino_graph(n, precision), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint})
    infos = [op.get_rt_info() for op in compiled.get_runtime_model().get_ops()]
    ran = {str(i["runtimePrecision"].astype(str)) for i in infos
           if str(i["layerType"].astype(str)) in ("FullyConnected", "MatMul")}
    if not ran & set(_RUNTIME[precision]):
        raise _Unavailable(f"openvino ran the {precision} matmul as {'/'.join(sorted(ran)) or '?'}")
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).uniform(-1, 1, (n, n)).astype(np.float32)
    return _gflops(lambda: request.infer({0: x}), n, repeats)


def _libraries(precision: str) -> list[tuple[str, Callable[[int, int], tuple[float, float]]]]:
    fp32 = [("numpy", _numpy_fp32), ("onnxruntime", lambda n, r: _onnxruntime(n, "fp32", r)),
            ("openvino", lambda n, r: _openvino(n, "fp32", r))]
    int8 = [("onnxruntime", lambda n, r: _onnxruntime(n, "int8", r)),
            ("openvino", lambda n, r: _openvino(n, "int8", r))]
    bf16 = [("openvino", lambda n, r: _openvino(n, "bf16", r))]
    return {"fp32": fp32, "bf16": bf16, "int8": int8}[precision]


def measure_precision(precision: str, sizes: tuple[int, ...], repeats: int = REPEATS) -> dict:
    """One precision's floor: the best (library, size)'s GFLOP/s, every one's figure, or why none ran."""
    if precision == "bf16" and not set(isa_features()) & set(BF16_ISA):
        return {"gflops": None, "status": f"{NOT_AVAILABLE} (no bf16 hardware on this CPU)"}
    runs: dict[str, tuple[float, float, str, int]] = {}
    why: list[str] = []
    for name, fn in _libraries(precision):
        for n in sizes:
            try:
                best, median = fn(n, repeats)
                runs[f"{name} {n}"] = (round(best, 1), round(median, 1), name, n)
            except _Unavailable as exc:
                why.append(str(exc))
                break
            except Exception as exc:  # a library failing on this machine is a floor result, not a crash
                why.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
                break
    if not runs:
        return {"gflops": None, "status": f"{NOT_AVAILABLE} ({'; '.join(dict.fromkeys(why))})"}
    top = max(runs, key=lambda k: runs[k][0])
    best, median, lib, n = runs[top]
    return {"gflops": best, "median_gflops": median, "library": lib, "n": n, "status": "ok",
            "by_library": {k: v[0] for k, v in runs.items()}}


def measure_floor(sizes: dict[str, tuple[int, ...]] | None = None, repeats: int = REPEATS) -> dict:
    """The floor of every precision in ``sizes`` (default :data:`SIZES`), on every core."""
    sizes = sizes or SIZES
    t0 = time.perf_counter()
    out: dict = {p: measure_precision(p, ns, repeats) for p, ns in sizes.items()}
    libraries = {k: v for k, v in library_versions().items() if k in ("numpy", "onnxruntime", "openvino")}
    out["meta"] = {"version": VERSION, "threads": cpu_cores(), "repeats": repeats, "created": time.time(),
                   "seconds": round(time.perf_counter() - t0, 1), "libraries": libraries,
                   "method": "square matmuls n^3, fastest of the repeats, best library and size; "
                             "GFLOP/s = 2 n^3 / s"}
    return out


def _cache_file():
    from pathlib import Path

    root = os.environ.get("DFN_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "deepfusionnet") / "floor.json"


def _cache_key() -> str:
    return json.dumps({"v": VERSION, "sizes": SIZES, "machine": machine_key()}, sort_keys=True)


def _best_of(fresh: dict, earlier: dict | None) -> dict:
    """Per precision, the higher of a fresh and an earlier floor of the same machine (a ceiling is the
    best the machine has shown: a busy moment lowers a measurement, nothing raises it)."""
    if not isinstance(earlier, dict):
        return fresh
    out = dict(fresh)
    for p in SIZES:
        old, new = earlier.get(p) or {}, fresh.get(p) or {}
        if (old.get("gflops") or 0) > (new.get("gflops") or 0):
            out[p] = {**old, "earlier": True}
        elif isinstance(new, dict):
            out[p] = {k: v for k, v in new.items() if k != "earlier"}
    return out


def machine_floor(refresh: bool = False) -> dict:
    """The floor of this machine: the cached one (``$DFN_CACHE/floor.json``, per machine and library
    versions) unless ``refresh`` or none is cached. A fresh measurement is merged with the cached one,
    each precision keeping the higher figure (marked ``"earlier": true`` when the cached one won)."""
    from deepfusionnet.runtime.images import atomic_write_bytes

    path = _cache_file()
    key = _cache_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not refresh and isinstance(cached, dict) and isinstance(cached.get(key), dict):
        return {**cached[key], "cached": True}
    floor = _best_of(measure_floor(), cached.get(key) if isinstance(cached, dict) else None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({key: floor}, indent=1).encode())
    except OSError:
        pass  # a read-only cache only costs a measurement next time
    return {**floor, "cached": False}


def floor_gflops(floor: dict | None, precision: str) -> float | None:
    """The floor of ``precision`` (``fp32``, ``bf16``, ``int8``; ``fp16`` has none measured), or None."""
    entry = (floor or {}).get(precision)
    return entry.get("gflops") if isinstance(entry, dict) else None


def fraction_of_floor(macs: dict[str, int], seconds: float, floor: dict | None) -> dict:
    """Achieved GFLOP/s of ``macs`` (multiply-adds per precision run) done in ``seconds``, and the
    fraction of the floor: time at the floors / time taken. None where a precision has no floor."""
    total = sum(macs.values())
    if not total or not seconds or seconds <= 0:
        return {"gflops": None, "floor_fraction": None, "floor_note": "no MACs or no time"}
    achieved = 2 * total / seconds / 1e9
    missing = [p for p, m in macs.items() if m and not floor_gflops(floor, p)]
    if missing:
        return {"gflops": achieved, "floor_fraction": None,
                "floor_note": f"no {'/'.join(missing)} floor measured"}
    ideal = sum(2 * m / (floor_gflops(floor, p) * 1e9) for p, m in macs.items() if m)
    return {"gflops": achieved, "floor_fraction": ideal / seconds, "floor_note": "ok"}


def floor_markdown(floor: dict | None) -> str:
    """One line: each precision's floor and the library that reached it, or why it is missing."""
    if not floor:
        return "Floor: not measured.\n"
    parts = []
    for p in SIZES:
        e = floor.get(p) or {}
        parts.append(f"{p} {e['gflops']:.0f} GFLOP/s ({e.get('library')}, {e.get('n')}^3)" if e.get("gflops")
                     else f"{p} {e.get('status', NOT_AVAILABLE)}")
    threads = (floor.get("meta") or {}).get("threads")
    return f"Floor (matmul on {threads} cores): {'; '.join(parts)}.\n"
