"""Source naming (jetson-utils style URIs) and frame sources: images, videos, live captures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.sources import (CaptureSource, Failure, Frame, ImageListSource, VideoSource,
                                           capture_opener, csi_pipeline, has_gstreamer, open_source)
from deepfusionnet.runtime.uris import parse_sink, parse_source
from helpers import colour_frames, write_video


@pytest.mark.parametrize("text,kind,target", [
    ("v4l2:///dev/video0", "v4l2", "/dev/video0"),
    ("v4l2://1", "v4l2", "/dev/video1"),
    ("csi://0", "csi", "0"),
    ("csi://1?width=1920&height=1080", "csi", "1"),
    ("rtsp://cam.local:554/stream1", "rtsp", "rtsp://cam.local:554/stream1"),
    ("videotestsrc num-buffers=10 ! video/x-raw,width=64,height=48", "gstreamer",
     "videotestsrc num-buffers=10 ! video/x-raw,width=64,height=48"),
])
def test_live_uris(text, kind, target):
    loc = parse_source(text)
    assert (loc.kind, loc.target, loc.live) == (kind, target, True)


def test_uri_options_and_stems():
    loc = parse_source("csi://1?width=1920&height=1080&fps=60")
    assert loc.options == {"width": "1920", "height": "1080", "fps": "60"}
    assert loc.stem() == "csi1"
    assert parse_source("v4l2:///dev/video2").stem() == "video2"
    assert parse_source("rtsp://user:pw@10.0.0.5/live").stem() == "10.0.0.5"


def test_file_paths_and_file_uri(tmp_path, samples):
    assert parse_source(str(samples / "lol-22.png")).kind == "image"
    assert parse_source(f"file://{samples / 'lime-6.bmp'}").kind == "image"
    assert parse_source(str(samples)).kind == "folder"
    video = write_video(tmp_path / "v.mp4", colour_frames(2))
    assert parse_source(f"file://{video}").kind == "video"
    assert not parse_source(str(video)).live


@pytest.mark.parametrize("text,message", [
    ("/nonexistent/x.png", "no such file"),
    ("display://0", "output, not an input"),
    ("ftp://host/x", "unknown source scheme"),
    ("csi://front", "sensor id"),
])
def test_bad_sources_are_one_line_errors(text, message):
    with pytest.raises(DFNError, match=message):
        parse_source(text)


def test_a_file_with_a_bang_is_a_file(tmp_path, samples):
    odd = tmp_path / "wow ! night.png"
    odd.write_bytes((samples / "lol-22.png").read_bytes())
    assert parse_source(str(odd)).kind == "image"


def test_unknown_file_type(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DFNError, match="not an image, video or folder"):
        parse_source(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("text,kind", [("out/", "folder"), ("out", "folder"), ("a.png", "image"),
                                       ("b.JPG", "image"), ("c.mp4", "video"), ("file://d.avi", "video"),
                                       ("display://0", "display"), ("appsrc ! fakesink", "gstreamer")])
def test_sinks(text, kind):
    assert parse_sink(text).kind == kind


def test_csi_pipeline_is_an_argus_appsink_pipeline():
    pipe = csi_pipeline(1, 1920, 1080, 30)
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ")
    assert "width=(int)1920" in pipe and "framerate=(fraction)30/1" in pipe
    assert pipe.rstrip().split("!")[-1].strip().startswith("appsink")


def test_csi_without_gstreamer_is_a_clear_error():
    if has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(DFNError, match="no GStreamer support"):
        capture_opener(parse_source("csi://0"))


def test_missing_v4l2_device():
    with pytest.raises(DFNError, match="no such camera device"):
        capture_opener(parse_source("v4l2:///dev/video99"))


def test_image_list_source_reports_bad_files(tmp_path, samples):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = list(ImageListSource([(samples / "lime-6.bmp", "a"), (bad, "b"), (tmp_path / "gone.jpg", "c")]))
    assert isinstance(items[0], Frame) and items[0].image.shape == (326, 326, 3) and items[0].tag == "a"
    assert [type(i) for i in items[1:]] == [Failure, Failure]
    assert items[1].name == str(bad) and ("corrupt" in items[1].reason or "not an image" in items[1].reason)
    assert "no such file" in items[2].reason


def test_video_source_reads_rgb_frames(tmp_path):
    path = write_video(tmp_path / "v.avi", colour_frames(5), fps=12, fourcc="MJPG")
    src = VideoSource(path)
    frames = list(src)
    src.close()
    assert (src.fps, src.length, src.size, src.live) == (12.0, 5, (48, 64), False)
    assert len(frames) == 5 and [f.index for f in frames] == list(range(5))
    r, g, b = frames[0].image.reshape(-1, 3).mean(0)
    assert r > 150 and b < 50  # red stays red: BGR was converted


def test_looping_video_is_live_and_stops_at_max_frames(tmp_path):
    path = write_video(tmp_path / "v.avi", colour_frames(3), fps=200, fourcc="MJPG")
    src = VideoSource(path, loop=True, realtime=True, max_frames=8)
    frames = list(src)
    src.close()
    assert src.live and len(frames) == 8
    # the loop restarts the clip: frame 3 is frame 0 again
    np.testing.assert_allclose(frames[3].image.astype(float).mean(), frames[0].image.astype(float).mean(), atol=2)


@pytest.mark.parametrize("content", [b"", b"\x00" * 2048])
def test_broken_video_file_is_one_line_error(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(DFNError) as err:
        open_source(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


class FlakyCapture:
    """A capture that delivers ``frames`` frames and then fails every read."""

    def __init__(self, frames: int, value: int) -> None:
        self.left, self.value = frames, value

    def isOpened(self) -> bool:
        return True

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.full((8, 8, 3), self.value, np.uint8)

    def get(self, prop):
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


def test_capture_reconnects_then_stops_cleanly():
    opened = []

    def opener():
        # first connection: 3 frames; one reconnect gives 2 more; afterwards the camera is gone
        if len(opened) < 2:
            opened.append(1)
            return FlakyCapture(3 if len(opened) == 1 else 2, len(opened))
        return None

    logs = []
    src = CaptureSource(opener, "fake://cam", reconnect=3, backoff=0.001, log=logs.append)
    frames = list(src)
    src.close()
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 1, 1, 2, 2]
    assert src.lost
    assert any("reconnected" in m for m in logs) and any("stopping" in m for m in logs)


def test_capture_that_never_opens_is_a_clear_error():
    with pytest.raises(DFNError, match="cannot open the source"):
        CaptureSource(lambda: None, "fake://cam", backoff=0.001)
