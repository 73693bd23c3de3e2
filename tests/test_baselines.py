"""Classical baselines: they brighten real LOL frames and land in the published classical range."""

from __future__ import annotations

import numpy as np
import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.measure.baselines import BASELINES, _cg_wls, get_baseline, is_baseline
from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.metrics import psnr, ssim

NAMES = ["1.png", "22.png", "111.png"]
ENHANCERS = [n for n, (_, s, _) in BASELINES.items() if s == 1 and n != "none"]


@pytest.fixture(scope="module")
def frames(lol_eval15):
    return [(read_image(lol_eval15 / "low" / n), read_image(lol_eval15 / "high" / n)) for n in NAMES]


@pytest.mark.parametrize("name", ENHANCERS)
def test_baseline_brightens_and_scores_in_classical_range(frames, name):
    b = get_baseline(f"baseline:{name}")
    scores, inputs = [], []
    for low, high in frames:
        out = b(low)
        assert out.dtype == np.uint8 and out.shape == low.shape
        assert out.mean() > low.mean() + 5, "a low-light baseline must brighten"
        scores.append((psnr(out, high), ssim(out, high)))
        inputs.append(psnr(low, high))
    p, s = np.mean(scores, axis=0)
    assert p > np.mean(inputs) + 1  # better than doing nothing (about 6.3 dB on these frames)
    # Published classical methods on LOL-v1 score about 13-19 dB; CLAHE alone barely brightens.
    lo, hi = (6.5, 12.0) if name == "clahe" else (12.0, 20.0)
    assert lo < p < hi
    assert 0.2 < s < 0.8


@pytest.mark.parametrize("name", ["bicubic", "lanczos"])
def test_sr_baselines_double_the_size(name):
    b = get_baseline(name)
    img = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    assert b.scale == 2 and b(img).shape == (20, 28, 3)


def test_lime_solver_solves_its_system():
    rng = np.random.default_rng(0)
    t_hat = rng.random((20, 30))
    wx, wy = rng.random((20, 30)) * 5, rng.random((20, 30)) * 5
    t = _cg_wls(t_hat, wx, wy, iters=2000, tol=1e-10)
    # (I + Dx' Wx Dx + Dy' Wy Dy) t = t_hat, written out with explicit differences
    wx[:, -1] = 0
    wy[-1, :] = 0
    gx = np.zeros_like(t)
    gy = np.zeros_like(t)
    gx[:, :-1] = (t[:, 1:] - t[:, :-1]) * wx[:, :-1]
    gy[:-1] = (t[1:] - t[:-1]) * wy[:-1]
    lhs = t.copy()
    lhs[:, :-1] -= gx[:, :-1]
    lhs[:, 1:] += gx[:, :-1]
    lhs[:-1] -= gy[:-1]
    lhs[1:] += gy[:-1]
    np.testing.assert_allclose(lhs, t_hat, atol=1e-7)
    # smoothing: the refined map varies less than the raw one
    assert np.abs(np.diff(t, axis=1)).mean() < np.abs(np.diff(t_hat, axis=1)).mean()


def test_names():
    assert is_baseline("baseline:clahe") and not is_baseline("deepfusionnet")
    with pytest.raises(DFNError, match="baseline:lime"):
        get_baseline("baseline:nope")
