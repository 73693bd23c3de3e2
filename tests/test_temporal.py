"""Video stability: the brightness smoother (no ghosting, scene-cut reset) and the flicker measures on
synthetic night clips made from a shipped sample photo."""

from __future__ import annotations

import numpy as np
import pytest

from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.measure.flicker import (brightness_flicker, score_clip, synthetic_clip,
                                                   temporal_noise)
from deepfusionnet.runtime.temporal import BrightnessSmoother


@pytest.fixture(scope="module")
def photo(samples):
    path = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[0]
    return read_image(path)


def test_static_clip_has_fresh_noise_but_a_steady_mean(photo):
    clip = synthetic_clip(photo, frames=8, motion="static", seed=1)
    assert len(clip) == 8 and clip[0].shape == (240, 320, 3) and clip[0].dtype == np.uint8
    assert not np.array_equal(clip[0], clip[1])  # new noise each frame
    assert temporal_noise(clip) > 0.01
    assert brightness_flicker(clip) < 0.01  # the noise averages out over a frame


def test_pan_moves_the_view(photo):
    a = synthetic_clip(photo, frames=6, motion="pan", photons=1e6, read_noise=0.0, pan_px=2.0)
    shift = np.abs(a[0][:, 2:].astype(int) - a[1][:, :-2].astype(int)).mean()
    assert shift < np.abs(a[0].astype(int) - a[1].astype(int)).mean()  # frame 1 is frame 0 moved 2 px


def test_a_pumping_enhancer_is_measured_and_the_smoother_calms_it(photo):
    clip = synthetic_clip(photo, frames=12, motion="static", seed=2)
    gains = np.tile([1.0, 1.3], 6)  # an enhancer whose brightness pumps by 30% frame to frame
    frames = iter(range(12))

    def pumping(img: np.ndarray) -> np.ndarray:
        g = gains[next(frames)]
        return np.clip(img.astype(np.float32) * 3 * g, 0, 255).astype(np.uint8)

    raw = score_clip(clip, pumping, static=True)
    assert raw.brightness_ratio > 10  # the input barely moves; the output pumps

    smoother = BrightnessSmoother(alpha=0.2)
    frames = iter(range(12))

    def smoothed(img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)[None] / 255
        y = pumping(img).astype(np.float32)[None] / 255
        return (np.clip(smoother(x, y), 0, 1)[0] * 255 + 0.5).astype(np.uint8)

    calm = score_clip(clip, smoothed, static=True)
    assert calm.brightness_flicker_out < 0.5 * raw.brightness_flicker_out


def test_smoother_scales_whole_frames_only_and_resets_on_a_scene_cut():
    s = BrightnessSmoother(alpha=0.5)
    x = np.full((1, 3, 4, 4), 0.1, np.float32)
    y1 = np.random.default_rng(0).uniform(0.3, 0.5, (1, 3, 4, 4)).astype(np.float32)
    assert np.array_equal(s(x, y1), y1)  # the first frame passes as it is
    y2 = y1 * 1.2
    out = s(x, y2)
    ratio = out / y2
    assert np.allclose(ratio, ratio.flat[0]) and ratio.flat[0] < 1  # one gain per frame: no ghosting
    bright = np.full((1, 3, 4, 4), 0.5, np.float32)  # the input jumps 5x: a new scene
    y3 = y1 * 2
    assert np.array_equal(s(bright, y3), y3)


def test_smoother_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        BrightnessSmoother(alpha=0)
    with pytest.raises(ValueError):
        BrightnessSmoother(cut_ratio=1.0)


def test_dfn_enhance_smooths_a_noisy_night_video_unless_told_not_to(photo, tmp_path):
    """A static night scene with fresh sensor noise in every frame (lossless video): the enhancer's
    brightness moves from frame to frame; --smooth on (the default for videos) steadies it."""
    from helpers import read_video, write_video

    from deepfusionnet.cli import main

    clip = synthetic_clip(photo, frames=10, motion="static", size=(160, 120), seed=3)
    src = write_video(tmp_path / "night.avi", clip, fourcc="FFV1")
    flicker = {}
    for smooth in ("on", "off"):
        out = tmp_path / f"{smooth}.avi"
        assert main(["enhance", str(src), "-o", str(out), "--backend", "onnxruntime", "--smooth", smooth]) == 0
        frames, _ = read_video(out)
        assert len(frames) == 10
        flicker[smooth] = brightness_flicker(frames)
    assert flicker["on"] < 0.7 * flicker["off"]
