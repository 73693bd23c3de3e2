"""PSNR/SSIM follow the standard LOL protocol: SSIM equals scikit-image's Wang et al. settings."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from deepfusionnet.runtime.measure.baselines import gamma
from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.metrics import gt_mean_correct, psnr, ssim

NAMES = ["1.png", "22.png", "748.png"]


def _sk(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


@pytest.mark.parametrize("name", NAMES)
def test_ssim_matches_skimage_on_eval15(lol_eval15, name):
    low = read_image(lol_eval15 / "low" / name)
    high = read_image(lol_eval15 / "high" / name)
    hi = high / 255.0
    for out in (low, gamma(low)):  # the raw dark input and a brightened one
        assert abs(ssim(out, high) - _sk(out / 255.0, hi)) < 1e-3
    assert ssim(high, high) == pytest.approx(1.0)


def test_ssim_matches_skimage_on_odd_sizes_and_gray():
    rng = np.random.default_rng(0)
    a = rng.random((37, 53, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert abs(ssim(a, b) - _sk(a, b)) < 1e-3
    g1, g2 = a[..., 0], b[..., 0]
    ref = structural_similarity(g1, g2, data_range=1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert abs(ssim(g1, g2) - ref) < 1e-3


def test_ssim_falls_with_noise():
    rng = np.random.default_rng(1)
    a = rng.random((64, 64, 3))
    scores = [ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 1)) for s in (0.01, 0.05, 0.2)]
    assert scores[0] > scores[1] > scores[2]


def test_psnr_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == float("inf")
    # an error of one grey level everywhere: 20 log10(255) dB
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255), abs=1e-9)
    # uint8 is scaled to [0, 1]: same number as the float images
    b = (a + 10).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(psnr(a / 255.0, b / 255.0))


def test_gt_mean_correct_undoes_a_global_exposure_error(lol_eval15):
    high = read_image(lol_eval15 / "high" / "1.png")
    dim = (high * 0.6).astype(np.uint8)  # right content, wrong exposure: the case GT-mean forgives
    out = gt_mean_correct(dim, high)
    w = np.array([0.299, 0.587, 0.114])
    assert (out @ w).mean() == pytest.approx(((high / 255.0) @ w).mean(), rel=1e-3)
    assert psnr(out, high) > 35 > psnr(dim, high) + 20
