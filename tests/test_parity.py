"""Parity: the comparison statistics, the tolerance table, `dfn parity` on two ONNX files, without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepfusionnet.runtime.measure.compare import (ParityReport, TOLERANCES, error_stats, run_parity,
                                                   tolerance_for)
from deepfusionnet.runtime.images import read_image, write_image
from deepfusionnet.runtime.measure.pairs import find_items

REPO = Path(__file__).resolve().parents[1]


def _img(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)


def test_error_stats_known_values():
    ref = np.full((1, 3, 10, 10), 0.5, np.float32)
    cand = ref.copy()
    cand[0, 0, 0, 0] = 0.6  # one pixel off by 0.1
    s = error_stats(ref, cand)
    assert s["max_abs"] == pytest.approx(0.1, abs=1e-6)
    assert s["mean_abs"] == pytest.approx(0.1 / 300, rel=1e-4)
    assert s["psnr"] == pytest.approx(10 * math.log10(300 / 0.01), rel=1e-4)
    assert s["nonfinite"] == 0
    assert error_stats(ref, ref)["psnr"] == math.inf


def test_nan_in_candidate_fails_every_tolerance():
    ref = _img(0)
    cand = ref.copy()
    cand[0, 1, 2, 3] = np.nan
    for precision in TOLERANCES:
        report = ParityReport("r", "c", precision, "output", tolerance_for(precision))
        from deepfusionnet.runtime.measure.compare import ImageResult

        report.images.append(ImageResult("x", cand.shape, error_stats(ref, cand)))
        assert not report.passed and "NaN" in report.failures()[0]


def test_tolerances_and_smallest_passing(tmp_path):
    frames = tmp_path / "frames"
    for i in range(2):
        write_image(frames / f"{i}.png", (np.random.default_rng(i).random((16, 24, 3)) * 255).astype(np.uint8))
    items = find_items(frames)
    noise = lambda x: np.clip(x + np.float32(0.003) * np.sign(x - 0.5), 0, 1)  # noqa: E731
    report = run_parity(lambda x: x, noise, items, "fp32")
    assert not report.passed and "max abs" in report.failures()[0]
    small = report.smallest_passing()
    assert small["max_abs"] == pytest.approx(0.003, abs=1e-5)
    # ~50 dB: fails FP32's elementwise bound but passes FP16's and INT8's PSNR bounds
    assert run_parity(lambda x: x, noise, items, "fp16").passed
    assert run_parity(lambda x: x, noise, items, "int8").passed
    assert report.to_json()["smallest_passing_tolerance"]["max_abs"] == pytest.approx(small["max_abs"])
    assert json.dumps(run_parity(lambda x: x, lambda x: x, items, "fp32").to_json())  # inf PSNR is JSON-safe


def test_ground_truth_drop_is_checked(tmp_path):
    for sub in ("low", "high"):
        write_image(tmp_path / sub / "a.png", np.full((16, 16, 3), 100, np.uint8))
    items = find_items(tmp_path)
    assert items[0][1] is not None
    darker = lambda x: x * np.float32(0.9)  # noqa: E731
    report = run_parity(lambda x: x, darker, items, "int8")
    s = report.summary()
    assert s["gt_psnr_reference"] == math.inf or s["gt_drop"] > 0.5
    assert not report.passed


def test_find_items_plain_folder_and_single_file(samples):
    items = find_items(samples)
    assert len(items) >= 2 and all(gt is None for _, gt in items)
    assert find_items(items[0][0]) == [(items[0][0], None)]
    assert len(find_items(samples, limit=1)) == 1


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> dict:
    """The SR model in FP32 and FP16 (dynamic H/W), exported without a check."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from deepfusionnet.export.pipeline import ExportOptions, export_model

    import onnx

    out = tmp_path_factory.mktemp("parity")
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = out / f"sr-{precision}.onnx"
        export_model("deepfusionnet-sr", paths[precision],
                     ExportOptions(precision=precision, size=None, check=False, simplify=False))
    # A broken candidate: the last conv's bias shifted, as a bad conversion would.
    proto = onnx.load(paths["fp32"])
    tail = [n for n in proto.graph.node if n.op_type == "Conv"][-1]  # nodes are in topological order
    bias = next(i for i in proto.graph.initializer if i.name == tail.input[2])
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
    paths["broken"] = out / "sr-broken.onnx"
    onnx.save(proto, paths["broken"])
    return paths


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory, samples) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_image(root / "a.png", read_image(samples / "lol-22.png")[:61, :83])
    return root


def test_cli_parity_two_onnx_files(tiny_onnx, small_frames, capsys):
    from deepfusionnet.cli import main

    rc = main(["parity", str(tiny_onnx["fp32"]), str(tiny_onnx["fp16"]), "--data", str(small_frames), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["passed"] and out["precision"] == "fp16"
    assert out["summary"]["psnr_min"] >= 45 and out["summary"]["nonfinite"] == 0
    # a broken graph misses the tolerance: exit 1, and the report says by how much
    rc = main(["parity", str(tiny_onnx["fp32"]), str(tiny_onnx["broken"]), "--data", str(small_frames),
               "--precision", "fp16"])
    assert rc == 1
    assert "FAIL: PSNR vs reference" in capsys.readouterr().err


def test_parity_runs_without_torch(tiny_onnx, small_frames):
    """`dfn parity` on two ONNX files imports no torch (a device with the base install)."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "from deepfusionnet.cli import main\n"
        f"rc = main(['parity', {str(tiny_onnx['fp32'])!r}, {str(tiny_onnx['fp16'])!r}, '--data', {str(small_frames)!r}])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stderr


def test_sr_parity_on_pairs_feeds_degraded_ground_truth(tiny_onnx, lol_eval15):
    """An SR model upscales normal-light frames: on pairs, parity feeds it the blurred, downscaled
    ground truth (as dfn eval does) and scores it against that ground truth, not the dark image."""
    from deepfusionnet.runtime.measure.compare import compare_models

    report = compare_models(str(tiny_onnx["fp32"]), str(tiny_onnx["fp16"]), lol_eval15, "fp16", limit=1,
                            backend_ref="onnxruntime", backend="onnxruntime", threads=1)
    (img,) = report.images
    high = read_image(sorted((lol_eval15 / "high").iterdir())[0])
    assert img.shape[2:] == high.shape[:2]  # x2 of the half-size degraded input = ground-truth size
    assert img.gt_psnr_reference > 20  # a dark input upscaled would score far lower against the bright GT
