"""The premise every enhance test relies on: the enhancer brightens a real night image and the SR model
doubles its size (the ``models`` fixture is in conftest.py)."""

from __future__ import annotations

from helpers import small_night


def test_models_brighten_and_upscale(models, samples):
    from deepfusionnet.runtime.enhancer import open_enhancer

    img = small_night(samples / "lol-22.png")
    enh = open_enhancer(str(models["deepfusionnet"]), "onnxruntime")
    sr = open_enhancer(str(models["deepfusionnet-sr"]), "onnxruntime")
    try:
        out = enh(img)
        assert out.shape == img.shape and out.mean() > img.mean() + 20
        assert sr(out).shape == (240, 320, 3)
    finally:
        enh.close()
        sr.close()
