"""Real TensorRT engines on a real GPU: build from exported ONNX at every precision, compare with ONNX
Runtime, run dfn enhance on an engine, and benchmark it. Skipped centrally (conftest) without CUDA and
TensorRT; nothing here is imported at collection time beyond pytest and numpy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

SIZE = (256, 256)  # H, W of the fixed-shape test engines


def _frames(samples: Path, n: int = 3) -> list[np.ndarray]:
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import to_tensor

    paths = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    return [to_tensor(read_image(p)[: SIZE[0], : SIZE[1]]) for p in paths]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, samples) -> dict[str, Path]:
    """deepfusionnet exported to FP32, FP16 and INT8 ONNX with the export stage's functions."""
    onnx_mod = pytest.importorskip("deepfusionnet.export.onnx")
    precision = pytest.importorskip("deepfusionnet.export.precision")
    sidecar = pytest.importorskip("deepfusionnet.export.sidecar")
    for mod, names in ((onnx_mod, ("load_source", "onnx_from_torch", "save")),
                       (precision, ("fp16_from_onnx", "int8_from_onnx", "calibration_reader")),
                       (sidecar, ("set_metadata",))):
        missing = [n for n in names if not hasattr(mod, n)]
        if missing:
            pytest.skip(f"export API changed: {mod.__name__} lacks {missing}")
    from deepfusionnet.runtime.artifacts import SHIPPED

    out = tmp_path_factory.mktemp("onnx")
    net, name, _ = onnx_mod.load_source("deepfusionnet")
    fp32 = onnx_mod.onnx_from_torch(net)
    scale, multiple, _ = SHIPPED[name]
    fp16, _ = precision.fp16_from_onnx(fp32)
    calib = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    int8, *_ = precision.int8_from_onnx(fp32, precision.calibration_reader(calib, "input", SIZE[1], SIZE[0], multiple))
    paths = {}
    for prec, proto in (("fp32", fp32), ("fp16", fp16), ("int8", int8)):
        sidecar.set_metadata(proto, name, scale, multiple, prec)
        paths[prec] = out / f"{name}-{prec}.onnx"
        onnx_mod.save(proto, paths[prec])
    return paths


@pytest.fixture(scope="module")
def engines(exported, tmp_path_factory) -> dict[str, Path]:
    from deepfusionnet.export.tensorrt import BuildOptions, engine_from_onnx

    out = tmp_path_factory.mktemp("engines")
    cache = out / "timing.cache"
    built = {}
    for prec, onnx in exported.items():
        res = engine_from_onnx(onnx, out / f"{prec}.engine", BuildOptions(shape=SIZE, timing_cache=str(cache)))
        assert res["strongly_typed"] and res["precision"] == prec
        built[prec] = Path(res["engine"])
    return built


@pytest.mark.parametrize("prec,min_db", [("fp32", 50.0), ("fp16", 45.0), ("int8", 32.0)])
def test_engine_matches_onnxruntime_fp32(engines, exported, samples, prec, min_db):
    from deepfusionnet.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from deepfusionnet.runtime.backends.tensorrt import TensorRTBackend
    from deepfusionnet.runtime.metrics import psnr

    ref = OnnxRuntimeBackend(exported["fp32"], providers=["CPUExecutionProvider"])
    be = TensorRTBackend(engines[prec])
    try:
        for x in _frames(samples):
            want = ref.infer({"input": x})["output"]
            got = be.infer({"input": x})["output"].astype(np.float32)
            assert np.isfinite(got).all(), f"{prec}: NaN/Inf in the TensorRT output"
            db = psnr(np.clip(got[0], 0, 1).transpose(1, 2, 0), np.clip(want[0], 0, 1).transpose(1, 2, 0))
            assert db >= min_db, f"{prec} engine vs ONNX Runtime FP32: {db:.2f} dB < {min_db} dB"
    finally:
        be.close()


def test_cuda_graph_gives_the_same_output(engines, samples):
    """Replays must follow each new frame: a graph kept from a failed capture would hand back frame 1."""
    from deepfusionnet.runtime.backends.tensorrt import TensorRTBackend

    frames = _frames(samples, 3)
    plain, graph = TensorRTBackend(engines["fp16"]), TensorRTBackend(engines["fp16"], cuda_graph=True)
    try:
        for x in frames + frames:  # capture on the first, replays after
            np.testing.assert_array_equal(graph.infer({"input": x})["output"], plain.infer({"input": x})["output"])
        assert graph.cuda_graph, "the fp16 engine should be capturable; see stderr for why it was not"
    finally:
        plain.close()
        graph.close()


def test_dfn_enhance_on_an_engine(engines, samples, tmp_path):
    img = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-m", "deepfusionnet.cli", "enhance", str(img), "-o", str(out),
                           "--model", str(engines["fp16"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from deepfusionnet.runtime.images import read_image

    res = read_image(out)
    assert res.shape == read_image(img).shape and res.mean() > read_image(img).mean()


def test_benchmark_engines(engines, samples, tmp_path):
    """Latency per precision (printed and written as JSON; no timed assertion)."""
    from deepfusionnet.runtime.backends.tensorrt import TensorRTBackend

    x = _frames(samples, 1)[0]
    report = {}
    for prec, path in engines.items():
        for graph in (False, True):
            be = TensorRTBackend(path, cuda_graph=graph)
            try:
                for _ in range(5):
                    be.infer({"input": x})
                ms = []
                for _ in range(30):
                    t0 = time.perf_counter()
                    be.infer({"input": x})
                    ms.append((time.perf_counter() - t0) * 1e3)
            finally:
                be.close()
            report[f"{prec}{'+graph' if graph else ''}"] = {"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                                                           "device": be.device.get("name"), "size": list(SIZE)}
    print(json.dumps(report, indent=2))
    (tmp_path / "bench.json").write_text(json.dumps(report))
    assert all(v["p50_ms"] > 0 for v in report.values())
