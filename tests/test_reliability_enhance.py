"""`dfn enhance` when inputs are broken, odd or disappear, and when the run itself is cut short.

Uses a tiny identity ONNX model (a 1x1 convolution with identity weights), so every output must
equal its input: sizes, orientation and values are checked exactly, not just "something was written".
Interrupt and kill tests run `dfn` as a real process on a deliberately slow model.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from deepfusionnet.cli import main  # noqa: E402
from deepfusionnet.runtime.images import read_image, temporary_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
sys.path.insert(0, str(Path(__file__).parent))
from helpers import huge_png  # noqa: E402


def _save(path: Path, nodes, inits, ch: int = 3) -> Path:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, ch, "h", "w"])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> Path:
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return _save(tmp_path_factory.mktemp("m") / "identity.onnx", [helper.make_node("Conv", ["input", "w"], ["output"])],
                 [numpy_helper.from_array(w, "w")])


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """~1.5 GFLOP per 128x128 frame: slow enough to interrupt a batch in the middle."""
    c, n = 32, 12
    nodes, inits, prev = [], [], "input"
    for i in range(n + 2):
        cin = 3 if i == 0 else c
        cout = 3 if i == n + 1 else c
        w = (RNG.standard_normal((cout, cin, 3, 3)) * (0.3 / np.sqrt(cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "output" if i == n + 1 else f"t{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], pads=[1, 1, 1, 1]))
        prev = out
    return _save(tmp_path_factory.mktemp("m") / "slow.onnx", nodes, inits)


def enhance(capsys, *args) -> tuple[int, str]:
    code = main(["enhance", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") or ".part" in p.name or p.suffix == ".tmp"]


def write_video(path: Path, n: int = 10, size=(48, 64)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(n):
        f = np.zeros((*size, 3), np.uint8)
        f[..., 2], f[..., 1] = 200, (20 * i) % 256
        writer.write(f)
    writer.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    n, size = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, size = n + 1, f.shape[:2]
    cap.release()
    return n, size


# ---------------------------------------------------------------- a folder of good, odd and broken files


def _exif_jpeg(path: Path, img: np.ndarray, orientation: int) -> None:
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=95)


@pytest.fixture
def mixed(tmp_path) -> tuple[Path, dict[str, tuple[int, int]], list[str]]:
    """An input folder: valid oddities (name -> expected output (H, W)) and broken files."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    img = RNG.integers(0, 80, (20, 30, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:20, 0:30]
    smooth = np.dstack([xx * 2, yy * 3, np.full_like(xx, 40)]).astype(np.uint8)  # JPEG-friendly
    good: dict[str, tuple[int, int]] = {}

    def put(name: str, write, hw: tuple[int, int]) -> None:
        write(d / name)
        good[name] = hw

    put("plain.png", lambda p: cv2.imwrite(str(p), img), (20, 30))
    put("gray.png", lambda p: Image.fromarray(img[..., 0]).save(p), (20, 30))
    put("rgba.png", lambda p: Image.fromarray(np.dstack([img, np.full((20, 30), 255, np.uint8)])).save(p), (20, 30))
    put("palette.png", lambda p: Image.fromarray(img).convert("P").save(p, transparency=0), (20, 30))
    put("cmyk.jpg", lambda p: Image.fromarray(smooth).convert("CMYK").save(p, quality=95), (20, 30))
    put("deep16.png", lambda p: cv2.imwrite(str(p), img.astype(np.uint16) * 257), (20, 30))
    put("deep16.tif", lambda p: cv2.imwrite(str(p), img.astype(np.uint16) * 257), (20, 30))
    put("rotated.jpg", lambda p: _exif_jpeg(p, smooth, 6), (30, 20))
    put("one.png", lambda p: cv2.imwrite(str(p), img[:1, :1]), (1, 1))
    put("thin.png", lambda p: cv2.imwrite(str(p), img[:1]), (1, 30))
    put("tall.bmp", lambda p: cv2.imwrite(str(p), img[:, :1]), (20, 1))
    put("odd.webp", lambda p: Image.fromarray(img[:7, :13]).save(p, lossless=True), (7, 13))
    put("png-named.jpg", lambda p: Image.fromarray(smooth).save(p, format="PNG"), (20, 30))
    put("sub/nested.png", lambda p: cv2.imwrite(str(p), img), (20, 30))
    put("with space é.png", lambda p: cv2.imwrite(str(p), img), (20, 30))
    put("-dash.png", lambda p: cv2.imwrite(str(p), img), (20, 30))
    noise = cv2.imencode(".jpg", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    bad = {"empty.png": b"", "truncated.jpg": noise[:700], "notes.png": b"not a picture\n" * 9,
           "bomb.png": huge_png(), "sub/broken.tif": b"II*\x00" + bytes(60), "clip.mp4": os.urandom(2000)}
    for name, data in bad.items():
        (d / name).write_bytes(data)
    return d, good, sorted(bad)


def test_mixed_folder_good_processed_bad_listed_exit_2(mixed, identity, tmp_path, capsys):
    src, good, bad = mixed
    before = digest(src)
    out = tmp_path / "out"
    code, err = enhance(capsys, src, "-o", out, "--model", identity)
    assert code == 2, err
    lines = err.strip().splitlines()
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert sorted(ln.split(": ")[1] for ln in failed) == sorted(str(src / b) for b in bad), err
    # Listed at the end, then the summary.
    assert lines[-len(failed) - 1:-1] == failed and f"{len(failed)} failed" in lines[-1]
    for name, hw in good.items():
        result = read_image(out / name)
        assert result.shape[:2] == hw, name
        expect = read_image(src / name)  # the identity model: output == decoded input
        if Path(name).suffix in (".png", ".bmp", ".tif", ".webp"):
            np.testing.assert_array_equal(result, expect, err_msg=name)
        else:
            assert np.abs(result.astype(int) - expect).mean() < 3, name
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == set(good), written ^ set(good)
    assert digest(src) == before  # inputs untouched, not even their mtime
    assert not temporaries(out)


def test_single_broken_input_is_the_error(mixed, identity, tmp_path, capsys):
    src, _, bad = mixed
    for name in bad:
        code, err = enhance(capsys, src / name, "-o", tmp_path / "o" / "x.png" if not name.endswith(".mp4")
                            else tmp_path / "o" / "x.mp4", "--model", identity)
        assert code == 1 and len(err.strip().splitlines()) == 1 and name.split("/")[-1] in err, (name, err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_max_pixels_option(tmp_path, identity, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), RNG.integers(0, 80, (20, 30, 3), dtype=np.uint8))
    code, err = enhance(capsys, tmp_path / "a.png", "-o", tmp_path / "o.png", "--model", identity, "--max-pixels", 100)
    assert code == 1 and "30x20" in err
    code, err = enhance(capsys, tmp_path / "a.png", "-o", tmp_path / "o.png", "--model", identity, "--max-pixels", 600)
    assert code == 0, err


# ---------------------------------------------------------------- never overwrite inputs, never leave -o


def test_output_equal_to_input_is_refused(tmp_path, identity, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), RNG.integers(0, 80, (20, 30, 3), dtype=np.uint8))
    vid = write_video(tmp_path / "v.mp4")
    before = digest(tmp_path)
    for src, dst in [(img, img), (vid, vid), (img, tmp_path / "." / "a.png"), (img, tmp_path)]:
        code, err = enhance(capsys, src, "-o", dst, "--model", identity)
        assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert digest(tmp_path) == before


def test_outputs_never_escape_the_output_folder(tmp_path, identity, capsys):
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)  # out/sub/x.png would land in elsewhere/
    cv2.imwrite(str(src / "sub" / "x.png"), RNG.integers(0, 80, (8, 8, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "y.png"), RNG.integers(0, 80, (8, 8, 3), dtype=np.uint8))
    code, err = enhance(capsys, src, "-o", out, "--model", identity)
    assert code == 2 and "leave the output folder" in err
    assert list(elsewhere.iterdir()) == []
    assert (out / "y.png").is_file()


# ---------------------------------------------------------------- videos


def test_good_video_and_broken_videos(tmp_path, identity, capsys):
    good = write_video(tmp_path / "good.mp4", n=10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.avi").write_bytes(os.urandom(4000))
    code, err = enhance(capsys, good, "-o", tmp_path / "out" / "good.mp4", "--model", identity)
    assert code == 0, err
    assert count_frames(tmp_path / "out" / "good.mp4") == (10, (48, 64))
    for name in ("empty.mp4", "truncated.mp4", "junk.avi"):
        code, err = enhance(capsys, tmp_path / name, "-o", tmp_path / "out" / name, "--model", identity)
        assert code == 1 and len(err.strip().splitlines()) == 1 and name in err, err
        assert not (tmp_path / "out" / name).exists()
    assert not temporaries(tmp_path / "out")


class _FakeCamera:
    """A cv2.VideoCapture stand-in at 20 fps: ``frames`` good reads, then reads fail (cable pulled)."""

    def __init__(self, frames: int, start: int = 0) -> None:
        self.left, self.i = frames, start

    def isOpened(self) -> bool:
        return self.left >= 0

    def read(self):
        if self.left <= 0:
            return False, None
        time.sleep(0.05)
        self.left -= 1
        self.i += 1
        f = np.zeros((48, 64, 3), np.uint8)
        f[..., 1] = (10 * self.i) % 256
        return True, f

    def get(self, prop):
        return 20.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.left = -1


@pytest.mark.parametrize("comes_back", [False, True])
def test_live_source_disappears_reconnects_then_stops_keeping_the_video(tmp_path, identity, capsys, monkeypatch,
                                                                        comes_back):
    import json

    import deepfusionnet.runtime.sources as sources

    opened = []

    def opener(loc):
        def open_cam():
            opened.append(time.monotonic())
            if len(opened) == 1:
                return _FakeCamera(6)
            if comes_back and len(opened) == 3:  # the second reconnect attempt finds it again
                return _FakeCamera(4, start=100)
            return _FakeCamera(-1)  # not there

        return open_cam

    monkeypatch.setattr(sources, "capture_opener", opener)
    out = tmp_path / "cam.mp4"
    code = main(["enhance", "v4l2:///dev/video7", "-o", str(out), "--model", str(identity), "--reconnect", "2",
                 "--json"])
    captured = capsys.readouterr()
    err, report = captured.err, json.loads(captured.out)
    assert "Traceback" not in err and code == 0, err
    # Two attempts, 0.5 s then 1 s apart, after each loss; a successful reconnect starts over.
    assert len(opened) == (5 if comes_back else 3), err
    waits = np.diff(opened)
    for i in range(0, len(waits), 2):
        assert 0.45 <= waits[i] and waits[i + 1] >= 0.95, waits
    assert err.count("reconnecting") == len(waits)
    assert "source gone after 2 reconnect attempts" in err and "kept" in err
    total = 6 + (4 if comes_back else 0)
    assert report["frames"] + report["dropped"] == total and report["frames"] >= 1
    assert count_frames(out) == (report["frames"], (48, 64))  # closed properly: playable, every frame there
    assert report["outputs"] == [str(out)]
    assert not temporaries(tmp_path)


# ---------------------------------------------------------------- interrupted batches


# Big enough that a batch takes seconds even on a fast CI machine, so a signal sent after the first output
# still lands mid-batch.
BATCH, SIDE = 24, 256


def _batch(tmp_path: Path, n: int = BATCH) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        cv2.imwrite(str(src / f"{i:02d}.png"), RNG.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8))
    return src


def _start(*args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DFN_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "deepfusionnet.cli", "enhance", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_output(proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not (out.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir())):
        if proc.poll() is not None:
            pytest.fail(f"dfn ended before the first output: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("no output appeared")
        time.sleep(0.02)


def _complete_outputs(src: Path, out: Path) -> list[str]:
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for name in names:
        assert read_image(out / name).shape == (SIDE, SIDE, 3), name  # never half-written
    assert set(names) <= {p.name for p in src.iterdir()}
    return names


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_outputs_then_skip_existing_completes(tmp_path, slow_model, sig):
    src = _batch(tmp_path)
    out = tmp_path / "out"
    args = [src, "-o", out, "--model", slow_model, "--backend", "onnxruntime"]
    proc = _start(*args)
    _wait_for_output(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    done = _complete_outputs(src, out)
    assert 1 <= len(done) < BATCH, "interrupt came too late to test anything"
    assert not temporaries(out)
    proc = _start(*args, "--skip-existing")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"skipping {len(done)} input(s)" in err
    assert len(_complete_outputs(src, out)) == BATCH
    assert not temporaries(out)


@pytest.mark.slow
def test_kill9_mid_batch_then_skip_existing_completes(tmp_path, slow_model):
    src = _batch(tmp_path)
    out = tmp_path / "out"
    args = [src, "-o", out, "--model", slow_model, "--backend", "onnxruntime"]
    proc = _start(*args)
    _wait_for_output(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _complete_outputs(src, out)  # whatever is there under a real name is whole
    proc = _start(*args, "--skip-existing")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"skipping {len(done)} input(s)" in err
    assert len(_complete_outputs(src, out)) == BATCH


@pytest.mark.slow
def test_kill9_leaves_no_temporaries_after_resume(tmp_path, slow_model):
    src = _batch(tmp_path, n=6)
    out = tmp_path / "out"
    args = [src, "-o", out, "--model", slow_model, "--backend", "onnxruntime"]
    # Plant what a kill -9 mid-write leaves behind (the real race is too narrow to hit on demand).
    out.mkdir()
    # pid 4194304 is above Linux's pid_max: the process that was writing it is surely gone.
    (out / temporary_name("00.png", 4194304)).write_bytes(b"\x89PNG half")
    proc = _start(*args, "--skip-existing")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not temporaries(out), temporaries(out)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"dfn ended too early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out")
        time.sleep(0.02)


@pytest.mark.slow
def test_interrupted_video_is_closed_playable_and_kept(tmp_path, slow_model):
    # Long enough that a quiet machine (~110 frames/s here) is still writing when the signal lands.
    clip = write_video(tmp_path / "clip.mp4", n=600, size=(128, 128))
    out = tmp_path / "out"
    proc = _start(clip, "-o", out, "--model", slow_model, "--backend", "onnxruntime")
    _wait_for(lambda: out.is_dir() and any(out.iterdir()), proc)  # the hidden temporary is being written
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    frames, size = count_frames(out / "clip.mp4")
    assert 1 <= frames < 60 and size == (128, 128)
    assert not temporaries(out)


@pytest.mark.slow
def test_kill9_mid_video_leaves_no_half_file_under_the_real_name(tmp_path, slow_model):
    # Long enough (seconds even on a fast CI machine) that the kill lands while the video is being written;
    # a 3-frame job once finished and renamed between two polls.
    n = 300
    clip = write_video(tmp_path / "clip.mp4", n=n, size=(128, 128))
    out = tmp_path / "out"
    args = [clip, "-o", out, "--model", slow_model, "--backend", "onnxruntime"]
    proc = _start(*args)
    _wait_for(lambda: out.is_dir() and any(".part" in p.name for p in out.iterdir()), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "clip.mp4").exists()
    proc = _start(*args)  # the same command again finishes the job
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert count_frames(out / "clip.mp4") == (n, (128, 128))
    assert not temporaries(out), temporaries(out)


@pytest.mark.slow
def test_kill9_video_temporaries_removed_by_the_next_run(tmp_path, identity):
    clip = write_video(tmp_path / "clip.mp4", n=3)
    out = tmp_path / "out"
    out.mkdir()
    # What a kill -9 leaves (observed): pid 4194304 is above Linux's pid_max, so surely not running.
    (out / ".dfn-probe-4194304-mp4v.mp4").write_bytes(b"half")
    (out / ".clip.mp4.4194304.part.mp4").write_bytes(b"half")
    proc = _start(clip, "-o", out, "--model", identity)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not temporaries(out), temporaries(out)
