"""``dfn enhance`` end to end on real night images (LOL-v1, DICM, LIME), shrunk so the suite stays fast."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfusionnet.cli import main
from helpers import REPO, read_video, small_night, write_video  # noqa: F401


@pytest.fixture(scope="session")
def model_args(models) -> list[str]:
    return ["--model", str(models["deepfusionnet"]), "--sr-model", str(models["deepfusionnet-sr"]),
            "--backend", "onnxruntime"]


@pytest.fixture(scope="session")
def night_dir(tmp_path_factory, samples, lol_eval15) -> Path:
    """samples/night + 3 LOL eval15 low images in a sub-folder, all real and small."""
    root = tmp_path_factory.mktemp("night")
    for src in sorted(samples.iterdir()):
        cv2.imwrite(str(root / src.name), cv2.cvtColor(small_night(src), cv2.COLOR_RGB2BGR))
    (root / "lol").mkdir()
    for src in sorted((lol_eval15 / "low").iterdir())[:3]:
        cv2.imwrite(str(root / "lol" / src.name), cv2.cvtColor(small_night(src), cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="session")
def night_video(tmp_path_factory, samples) -> Path:
    """6 frames (128x96) panning over a real LOL night image."""
    img = small_night(samples / "lol-22.png", (160, 96))
    frames = [np.ascontiguousarray(img[:, 5 * i:5 * i + 128]) for i in range(6)]
    return write_video(tmp_path_factory.mktemp("video") / "night.avi", frames, fps=12, fourcc="MJPG")


def dfn(*argv, capsys=None) -> tuple[int, dict | None, str]:
    """Run ``dfn enhance ... --json`` in-process: (exit code, JSON summary, stderr)."""
    code = main(["enhance", *map(str, argv), "--json"])
    out = capsys.readouterr() if capsys else None
    summary = json.loads(out.out) if out and out.out.strip() else None
    return code, summary, out.err if out else ""


def mean(path: Path) -> float:
    return float(cv2.imread(str(path)).mean())


def shape(path: Path) -> tuple[int, ...]:
    return cv2.imread(str(path)).shape


def hidden_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


def test_single_image_to_file(tmp_path, samples, model_args, capsys):
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "dicm-01.jpg"), cv2.COLOR_RGB2BGR))
    code, summary, _ = dfn(src, "-o", tmp_path / "out" / "bright.jpg", *model_args, capsys=capsys)
    out = tmp_path / "out" / "bright.jpg"
    assert code == 0 and summary["outputs"] == [str(out)] and summary["failures"] == []
    assert summary["backend"] == "onnxruntime" and summary["frames"] == 1
    assert shape(out) == shape(src) and mean(out) > mean(src) + 20
    assert hidden_files(tmp_path) == []


def test_folder_keeps_relative_paths_and_lists_bad_files(tmp_path, night_dir, model_args, capsys):
    src = tmp_path / "in"
    shutil.copytree(night_dir, src)
    (src / "lol" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image: ignored")
    (src / ".hidden.png").write_bytes(b"ignored too")
    code, summary, err = dfn(src, "-o", tmp_path / "out", *model_args, capsys=capsys)
    assert code == 2
    assert sorted(Path(f["input"]).name for f in summary["failures"]) == ["broken.png", "empty.jpg"]
    assert sum("failed: " in line for line in err.splitlines()) == 2
    good = sorted(p.relative_to(src) for p in src.rglob("*") if p.suffix in (".png", ".jpg", ".bmp")
                  and p.name not in ("broken.png", "empty.jpg", ".hidden.png"))
    made = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert made == good and len(made) == 7 and summary["outputs"] and len(summary["outputs"]) == 7
    for rel in good:
        assert shape(tmp_path / "out" / rel) == shape(src / rel)
        assert mean(tmp_path / "out" / rel) > mean(src / rel) + 15, rel
    assert hidden_files(tmp_path / "out") == []


def test_odd_sized_image(tmp_path, samples, model_args, capsys):
    src = tmp_path / "odd.bmp"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "lime-6.bmp", (157, 93)), cv2.COLOR_RGB2BGR))
    code, _, _ = dfn(src, "-o", tmp_path / "out", *model_args, capsys=capsys)
    out = tmp_path / "out" / "odd.bmp"
    assert code == 0 and shape(out) == (93, 157, 3) and mean(out) > mean(src) + 20


def test_upscale_and_fast(tmp_path, samples, model_args, capsys):
    src = tmp_path / "n.png"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "lol-748.png", (121, 91)), cv2.COLOR_RGB2BGR))
    code, summary, _ = dfn(src, "-o", tmp_path / "up.png", "--upscale", "2", *model_args, capsys=capsys)
    assert code == 0 and summary["mode"] == "upscale" and summary["sr_model"]
    assert shape(tmp_path / "up.png") == (182, 242, 3) and mean(tmp_path / "up.png") > mean(src) + 20
    code, summary, _ = dfn(src, "-o", tmp_path / "fast.png", "--fast", *model_args, capsys=capsys)
    assert code == 0 and summary["mode"] == "fast"
    assert shape(tmp_path / "fast.png") == (91, 121, 3) and mean(tmp_path / "fast.png") > mean(src) + 20
    assert main(["enhance", str(src), "-o", str(tmp_path / "x.png"), "--fast", "--upscale", "2", *model_args]) == 1


def test_video_file(tmp_path, night_video, model_args, capsys):
    code, summary, _ = dfn(night_video, "-o", tmp_path / "out", "--upscale", "2", *model_args, capsys=capsys)
    out = tmp_path / "out" / "night.avi"
    assert code == 0 and summary["outputs"] == [str(out)] and summary["frames"] == 6
    got, fps = read_video(out)
    src, src_fps = read_video(night_video)
    assert len(got) == 6 and fps == pytest.approx(src_fps) and got[0].shape == (192, 256, 3)
    assert np.mean(got) > np.mean(src) + 20
    code, _, _ = dfn(night_video, "-o", tmp_path / "same.mp4", *model_args, capsys=capsys)
    got, _ = read_video(tmp_path / "same.mp4")
    assert code == 0 and len(got) == 6 and got[0].shape == (96, 128, 3) and np.mean(got) > np.mean(src) + 20
    assert hidden_files(tmp_path) == []


def test_simulated_live_camera_drops_stale_frames(tmp_path, samples, model_args, capsys):
    # A looping clip played at 500 fps: far faster than any CPU runs the model, so frames must be dropped.
    img = small_night(samples / "lol-22.png")
    clip = write_video(tmp_path / "cam.avi", [np.roll(img, 4 * i, axis=1) for i in range(5)], fps=500, fourcc="MJPG")
    code, summary, _ = dfn(clip, "-o", tmp_path / "live.mp4", "--loop", "--max-frames", "60", *model_args,
                           capsys=capsys)
    assert code == 0 and summary["dropped"] > 0
    assert summary["frames"] + summary["dropped"] == 60
    got, _ = read_video(tmp_path / "live.mp4")
    assert len(got) == summary["frames"] and got[0].shape == (120, 160, 3) and np.mean(got) > img.mean() + 20


def test_tiled_matches_untiled_on_a_real_image(lol_eval15, models):
    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.runtime.metrics import psnr

    enh = open_enhancer(str(models["deepfusionnet"]), "onnxruntime", tile=1 << 30)
    scores, shifts = [], []
    for path in sorted((lol_eval15 / "low").glob("*.png"))[:4]:
        img = small_night(path, (320, 240))
        enh.tile, enh.overlap = 1 << 30, 48
        whole = enh(img)
        enh.tile = 192  # 2 x 2 tiles
        tiled = enh(img)
        assert tiled.shape == whole.shape
        scores.append(psnr(tiled, whole))
        shifts.append(abs(float(tiled.mean()) - float(whole.mean())))
    enh.close()
    # The shipped graph's .context/.tile companions give every tile the frame's attention context
    # (runtime.tile_context). Without them these 4 frames scored 24.9-38.3 dB, brightness off by 1-9
    # levels; misplaced or unblended tiles score far lower.
    assert enh.tile_context() is not None
    assert min(scores) >= 40, scores
    assert max(shifts) < 0.5, shifts


def test_tile_flag_reaches_the_enhancer(tmp_path, samples, model_args, models, capsys):
    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.runtime.images import read_image

    src = tmp_path / "n.png"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "lol-22.png", (160, 120)), cv2.COLOR_RGB2BGR))
    assert dfn(src, "-o", tmp_path / "t.png", "--tile", "96", "--overlap", "16", *model_args, capsys=capsys)[0] == 0
    enh = open_enhancer(str(models["deepfusionnet"]), "onnxruntime", tile=96, overlap=16)
    expected = enh(read_image(src))
    enh.close()
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), expected)


def test_refuses_to_overwrite_input(tmp_path, samples, model_args, capsys):
    src = tmp_path / "a.png"
    shutil.copy(samples / "lime-6.bmp", tmp_path / "a.bmp")
    cv2.imwrite(str(src), cv2.imread(str(tmp_path / "a.bmp")))
    before = src.read_bytes()
    code, _, err = dfn(src, "-o", src, *model_args, capsys=capsys)
    assert code == 1 and "refusing to overwrite" in err and src.read_bytes() == before
    code, _, err = dfn(tmp_path, "-o", tmp_path, *model_args, capsys=capsys)
    assert code == 1 and "refusing to overwrite" in err and src.read_bytes() == before


@pytest.mark.parametrize("argv,message", [
    (["{folder}", "-o", "{tmp}/x.png"], "needs an output folder"),
    (["{image}", "-o", "{tmp}/x.mp4"], "is an image"),
    (["{tmp}/missing.png", "-o", "{tmp}/out"], "no such file"),
])
def test_user_errors_are_one_line(tmp_path, samples, model_args, capsys, argv, message):
    argv = [a.format(folder=samples, tmp=tmp_path, image=samples / "lol-22.png") for a in argv]
    code = main(["enhance", *argv, *model_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0]


def test_broken_video_is_a_clear_error(tmp_path, model_args, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    code = main(["enhance", str(bad), "-o", str(tmp_path / "out"), *model_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(bad) in err[0] and "cannot read" in err[0]
    assert not (tmp_path / "out").exists() or hidden_files(tmp_path / "out") == []


def test_skip_existing_continues_a_batch(tmp_path, night_dir, model_args, capsys):
    out = tmp_path / "out"
    assert dfn(night_dir, "-o", out, *model_args, capsys=capsys)[0] == 0
    (out / "lol" / sorted(p.name for p in (out / "lol").iterdir())[0]).unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, summary, _ = dfn(night_dir, "-o", out, "--skip-existing", *model_args, capsys=capsys)
    assert code == 0 and summary["frames"] == 1 and len(summary["skipped"]) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_several_folders_keep_their_names(tmp_path, night_dir, samples, model_args, capsys):
    code, summary, _ = dfn(night_dir / "lol", samples / "lol-22.png", "-o", tmp_path / "out", *model_args,
                           capsys=capsys)
    assert code == 0
    made = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert made == ["lol-22.png"] + sorted(f"lol/{p.name}" for p in (night_dir / "lol").iterdir())


def test_default_backend_asks_auto_with_the_frame_size(tmp_path, samples, models, monkeypatch, capsys):  # noqa: F811
    from deepfusionnet.runtime.measure import auto

    calls = []

    def fake_choose(model, size=None, **kw):
        calls.append((Path(model).name, size))
        return auto.Choice("onnxruntime", str(model), {"threads": 1}, "fp32", "onnxruntime fp32", 1.0, size)

    monkeypatch.setattr(auto, "choose_with_options", fake_choose)
    src = tmp_path / "n.png"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "lol-22.png", (96, 64)), cv2.COLOR_RGB2BGR))
    code, summary, _ = dfn(src, "-o", tmp_path / "o.png", "--model", models["deepfusionnet"],
                           "--sr-model", models["deepfusionnet-sr"], "--fast", capsys=capsys)
    assert code == 0 and summary["backend"] == "onnxruntime"
    # runtime.measure.auto takes (width, height); in --fast both models run on the half-size frame
    assert calls == [("deepfusionnet.onnx", (48, 32)), ("deepfusionnet-sr.onnx", (48, 32))]
    assert shape(tmp_path / "o.png") == (64, 96, 3) and mean(tmp_path / "o.png") > mean(src) + 20


@pytest.mark.slow
def test_default_backend_auto_measures_and_runs(tmp_path, samples, models, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("DFN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "n.png"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "lol-22.png", (96, 64)), cv2.COLOR_RGB2BGR))
    code, summary, _ = dfn(src, "-o", tmp_path / "o.png", "--model", models["deepfusionnet"], capsys=capsys)
    assert code == 0 and summary["backend"] in ("onnxruntime", "openvino", "tensorrt")
    assert mean(tmp_path / "o.png") > mean(src) + 20
    assert (tmp_path / "cache" / "auto.json").is_file()


def test_ctrl_c_closes_the_video_and_exits_130(tmp_path, samples, models):  # noqa: F811
    img = small_night(samples / "lol-22.png", (64, 48))
    clip = write_video(tmp_path / "cam.avi", [img] * 3, fps=30, fourcc="MJPG")
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "deepfusionnet.cli", "enhance", str(clip), "-o", str(out), "--loop",
           "--model", str(models["deepfusionnet"]), "--backend", "onnxruntime", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.mp4.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)  # a few frames into the temp file
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    got, _ = read_video(out)
    assert summary["interrupted"] and len(got) == summary["frames"] > 0
    assert hidden_files(tmp_path) == []


def test_gstreamer_test_source(tmp_path, model_args, capsys):
    from deepfusionnet.runtime.sources import has_gstreamer

    pipe = "videotestsrc num-buffers=12 pattern=ball ! video/x-raw,width=96,height=64,framerate=30/1"
    if not has_gstreamer():
        code = main(["enhance", pipe, "-o", str(tmp_path / "gst.mp4"), *model_args])
        assert code == 1 and "no GStreamer support" in capsys.readouterr().err
        return
    code, summary, _ = dfn(pipe, "-o", tmp_path / "gst.mp4", *model_args, capsys=capsys)
    got, _ = read_video(tmp_path / "gst.mp4")
    assert code == 0 and 0 < len(got) == summary["frames"] and got[0].shape == (64, 96, 3)


def test_display_without_a_display_is_a_clear_error(tmp_path, night_video, model_args, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = main(["enhance", str(night_video), "-o", "display://0", *model_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "display" in err[0]
