"""The exposure gate: well-exposed frames pass through every backend unchanged, dark frames get the
network's output, bright regions of a night frame keep their own colours, and tiling cannot change it."""

from __future__ import annotations

import numpy as np
import pytest

from deepfusionnet.cli import main
from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.gate import ExposureGate, parse_gate
from deepfusionnet.runtime.images import read_image, write_image


def _frame(value: float, h: int = 48, w: int = 64) -> np.ndarray:
    return np.full((1, 3, h, w), value, np.float32)


def test_weight_follows_the_frames_median_brightness():
    g = ExposureGate()
    assert g.weight(_frame(0.05)).min() == pytest.approx(1.0)  # dark: the network's output
    assert g.weight(_frame(0.4)).max() == 0.0  # well exposed: the input
    mid = float(g.weight(_frame(0.15)).mean())
    assert 0.0 < mid < 1.0


def test_a_night_scene_under_a_bright_sky_still_counts_as_dark():
    x = _frame(0.03, 120, 160)
    x[..., :50, :] = 0.95  # sky: the mean is 0.41, the median is the dark scene's
    assert float(x.mean()) > 0.3 and ExposureGate().weight(x).item() == pytest.approx(1.0)


def test_gate_applies_to_the_whole_frame_before_tiling_and_needs_equal_sizes():
    g = ExposureGate()
    x, y = _frame(0.05), _frame(0.5)
    assert np.allclose(g.apply(x, y), y)
    with pytest.raises(ValueError):
        g.apply(x, _frame(0.5, 96, 128))


def test_gate_settings_are_checked():
    with pytest.raises(DFNError):
        ExposureGate(lo=0.3, hi=0.2)
    assert parse_gate("off", "x") is None
    assert parse_gate('{"lo": 0.05, "hi": 0.3}', "x") == ExposureGate(lo=0.05, hi=0.3)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_well_exposed_photo_passes_through_enhance_unchanged(lol_eval15, tmp_path, backend, capsys):
    pytest.importorskip(backend)
    src = lol_eval15 / "high" / "1.png"
    assert main(["enhance", str(src), "-o", str(tmp_path / "on"), "--backend", backend]) == 0
    assert main(["enhance", str(src), "-o", str(tmp_path / "off"), "--backend", backend,
                 "--exposure-gate", "off"]) == 0
    inp = read_image(src)
    on, off = read_image(tmp_path / "on" / "1.png"), read_image(tmp_path / "off" / "1.png")
    assert np.array_equal(on, inp)  # the gate keeps a well-lit frame exactly
    assert np.abs(off.astype(int) - inp.astype(int)).mean() > 20  # the bare network over-brightens it


def test_dark_frames_get_the_networks_output(lol_eval15, tmp_path):
    src = lol_eval15 / "low" / "1.png"
    big = np.concatenate([read_image(src)] * 2, axis=1)  # 1200x400
    write_image(tmp_path / "big.png", big)
    assert main(["enhance", str(tmp_path / "big.png"), "-o", str(tmp_path / "a"), "--backend", "onnxruntime"]) == 0
    assert main(["enhance", str(tmp_path / "big.png"), "-o", str(tmp_path / "b"), "--backend", "onnxruntime",
                 "--exposure-gate", "off"]) == 0
    on, off = read_image(tmp_path / "a" / "big.png"), read_image(tmp_path / "b" / "big.png")
    assert on.mean() > 2 * big.mean()  # lifted
    assert np.abs(on.astype(int) - off.astype(int)).mean() < 3  # a dark frame: (almost) the network's output


def test_eval_robustness_reports_well_exposed_inputs_flicker_and_tiling(lol_eval15, tmp_path, capsys):
    """--robustness on a purely local network (conv + sigmoid): its tiles must agree with the whole frame,
    and every report is there."""
    import json
    import shutil

    pytest.importorskip("onnx")
    from helpers import tiny_onnx

    data = tmp_path / "pairs"
    for sub in ("low", "high"):
        (data / sub).mkdir(parents=True)
        for name in ("1.png", "22.png"):
            shutil.copy(lol_eval15 / sub / name, data / sub / name)
    model = tiny_onnx(tmp_path / "local.onnx")
    assert main(["eval", str(model), "--data", str(data), "--backend", "onnxruntime", "--robustness",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["robustness"]
    assert r["well_exposed"]["images"] == 2 and 0 <= r["well_exposed"]["clipped_fraction"] <= 1
    assert set(r["flicker"]) == {"static", "static_smoothed", "pan", "pan_smoothed"}
    assert r["flicker"]["static"]["temporal_noise_in"] > 0 and r["flicker"]["pan"]["temporal_noise_in"] is None
    assert set(r["tiling_psnr_db"]) == {"640x480", "1920x1080"}
    assert min(r["tiling_psnr_db"].values()) > 45  # a local network tiles without seams
