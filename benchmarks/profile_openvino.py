"""Where OpenVINO's CPU time goes, per layer type and per layer, for one model/precision/size.

    python benchmarks/profile_openvino.py benchmarks/results/artifacts/deepfusionnet.onnx --precision bf16
    python benchmarks/profile_openvino.py benchmarks/results/artifacts/deepfusionnet.int8.onnx --precision bf16

Uses OpenVINO's own per-node counters (``PERF_COUNT``); the kernel name (``exec_type``) shows whether a
convolution really ran as ``brgconv_avx512_bf16`` / ``..._I8`` or fell back to a reference kernel.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time


def profile(path: str, precision: str | None, size: tuple[int, int], threads: int | None, runs: int) -> dict:
    import numpy as np
    import openvino as ov

    from deepfusionnet.runtime.measure.frames import synthetic_frame
    from deepfusionnet.runtime.processing import to_tensor

    core = ov.Core()
    model = core.read_model(path)
    w, h = size
    model.reshape({model.inputs[0].get_any_name(): [1, 3, h, w]})
    cfg = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    x = to_tensor(synthetic_frame(size))
    req.infer({0: x})
    best, prof = float("inf"), None
    for _ in range(runs):  # keep the counters of the fastest run: the least disturbed by other load
        t0 = time.perf_counter()
        req.infer({0: x})
        dt = time.perf_counter() - t0
        if dt < best:
            best, prof = dt, req.get_profiling_info()
    by_type: collections.Counter = collections.Counter()
    layers = []
    for p in prof:
        us = p.real_time.total_seconds() * 1e6
        by_type[f"{p.node_type} [{p.exec_type}]"] += us
        layers.append((us, p.node_name, p.node_type, p.exec_type))
    total = sum(by_type.values())
    return {"model": path, "precision": precision, "size": f"{w}x{h}", "wall_ms": best * 1000,
            "counted_ms": total / 1000,
            "by_type": [{"type": k, "ms": v / 1000, "share": v / total} for k, v in by_type.most_common()],
            "top_layers": [{"ms": us / 1000, "name": n, "type": t, "kernel": e}
                           for us, n, t, e in sorted(layers, reverse=True)[:20]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--precision", default=None, help="bf16, f16 or f32 (default: the plugin's)")
    p.add_argument("--size", default="600x400")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from deepfusionnet.runtime.sizes import parse_size

    w, h = parse_size(args.size)
    res = profile(args.model, args.precision, (w, h), args.threads, args.runs)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        return 0
    print(f"{res['model']} {res['precision']} {res['size']}: {res['wall_ms']:.1f} ms wall, "
          f"{res['counted_ms']:.1f} ms in nodes")
    for r in res["by_type"][:15]:
        print(f"{r['ms']:8.1f} ms {100 * r['share']:5.1f}%  {r['type']}")
    print("slowest layers:")
    for r in res["top_layers"]:
        print(f"{r['ms']:8.1f} ms  {r['name'][:70]}  {r['type']} [{r['kernel']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
