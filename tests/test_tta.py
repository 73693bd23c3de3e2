"""The geometric self-ensemble (``--tta``): exact inverse transforms, scale-2 models, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepfusionnet.cli import main
from deepfusionnet.runtime.enhancer import self_ensemble
from deepfusionnet.runtime.images import read_image, write_image
from deepfusionnet.runtime.metrics import psnr


def ramp(x: np.ndarray) -> np.ndarray:
    """Not orientation-equivariant: adds a left-to-right ramp, so every transform sees a different one."""
    return x + np.linspace(0, 1, x.shape[-1], dtype=np.float32)


@pytest.mark.parametrize("n", [4, 8])
def test_equivariant_model_is_unchanged_and_shapes_kept(n):
    x = np.random.default_rng(0).random((1, 3, 5, 7), dtype=np.float32)
    assert np.allclose(self_ensemble(lambda t: t * 2, x, n), x * 2, atol=1e-6)
    # A 2x nearest upscaler (an SR model's shape) with a non-square frame: transposes must come back.
    up = self_ensemble(lambda t: t.repeat(2, -2).repeat(2, -1), x, n)
    assert up.shape == (1, 3, 10, 14) and np.allclose(up, x.repeat(2, -2).repeat(2, -1), atol=1e-6)


def test_orientation_dependent_model_is_averaged():
    x = np.zeros((1, 3, 4, 6), np.float32)
    r = np.linspace(0, 1, 6, dtype=np.float32)
    # Flips along W reverse the ramp; the other two keep it: the mean of r and r[::-1] across columns.
    assert np.allclose(self_ensemble(ramp, x, 4)[0, 0, 0], (r + r[::-1]) / 2, atol=1e-6)
    # With transposes the ramp also runs down the rows (4-long here, over H after the inverse).
    got8 = self_ensemble(ramp, x, 8)[0, 0]
    rows = np.linspace(0, 1, 4, dtype=np.float32)
    want = ((r + r[::-1]) / 2)[None, :] / 2 + ((rows + rows[::-1]) / 2)[:, None] / 2
    assert np.allclose(got8, want, atol=1e-6)


@pytest.fixture(scope="module")
def crop1(lol_eval15, tmp_path_factory):
    root = tmp_path_factory.mktemp("crop1")
    for sub in ("low", "high"):
        write_image(root / sub / "22.png", read_image(lol_eval15 / sub / "22.png")[120:232, 160:336])
    return root


def _eval(capsys, *args) -> dict:
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_tta_is_recorded_and_scores_differently(crop1, capsys):
    one = _eval(capsys, "deepfusionnet", "--backend", "onnxruntime", "--data", crop1)
    eight = _eval(capsys, "deepfusionnet", "--backend", "onnxruntime", "--data", crop1, "--tta")
    assert one["tta"] == 1 and eight["tta"] == 8
    assert abs(eight["psnr"] - one["psnr"]) > 1e-3  # the network is not exactly flip-equivariant
    assert abs(eight["psnr"] - one["psnr"]) < 2  # ... but nearly: the average stays a good picture


def test_enhance_tta_writes_the_averaged_frame(crop1, tmp_path, capsys):
    for n in ("1", "4"):
        assert main(["enhance", str(crop1 / "low" / "22.png"), "-o", str(tmp_path / n), "--backend",
                     "onnxruntime", "--tta", n]) == 0
    a, b = read_image(tmp_path / "1" / "22.png"), read_image(tmp_path / "4" / "22.png")
    assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() > 0
    # Another picture, but as good a one: within 2 dB of the single pass against the ground truth.
    gt = read_image(crop1 / "high" / "22.png")
    assert abs(psnr(b, gt) - psnr(a, gt)) < 2 and psnr(b, gt) > psnr(read_image(crop1 / "low" / "22.png"), gt) + 5


def test_tta_errors_are_one_line(crop1, capsys):
    assert main(["eval", "baseline:gamma", "--data", str(crop1), "--tta", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "baseline" in err and "--tta" in err
    # argparse: not one of 1, 4, 8; a usage error is one line and exit 1 like every user error
    assert main(["eval", "deepfusionnet", "--data", str(crop1), "--tta", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tta: invalid choice: 3" in err
