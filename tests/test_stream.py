"""The threaded capture -> infer -> write stream (runtime.stream), and the sinks it writes through."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.stream import DONE, FrameQueue, run_stream
from deepfusionnet.runtime.sinks import ImageFileSink, VideoFileSink
from deepfusionnet.runtime.sources import Failure, Frame, VideoSource
from helpers import colour_frames, read_video, write_video


class ListSink:
    wants_stop = False

    def __init__(self, fail_on: set[int] = frozenset(), delay: float = 0.0) -> None:
        self.got: list[tuple[int, np.ndarray]] = []
        self.fail_on, self.delay = fail_on, delay

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        if frame.index in self.fail_on:
            raise DFNError(f"{frame.name}: cannot write")
        time.sleep(self.delay)
        self.got.append((frame.index, rgb))


def frames(n: int, live: bool = False, every: float = 0.0):
    class Src:
        def __iter__(self):
            for i in range(n):
                if every:
                    time.sleep(every)
                yield Frame(np.full((4, 4, 3), i % 256, np.uint8), i, f"f{i}")

    src = Src()
    src.live = live
    return src


def invert(img: np.ndarray) -> np.ndarray:
    return 255 - img


def test_every_frame_in_order():
    sink = ListSink(delay=0.001)
    stats = run_stream(frames(50), invert, sink, queue_size=2)
    assert [i for i, _ in sink.got] == list(range(50))
    assert all(int(img[0, 0, 0]) == 255 - i for i, img in sink.got)
    assert (stats.read, stats.processed, stats.written, stats.dropped) == (50, 50, 50, 0)


def test_live_source_drops_stale_frames_not_lags():
    def slow(img):
        time.sleep(0.02)
        return img

    sink = ListSink()
    stats = run_stream(frames(60, live=True, every=0.002), slow, sink)
    written = [i for i, _ in sink.got]
    assert stats.dropped > 0 and stats.read == 60
    assert stats.processed + stats.dropped == 60
    assert written == sorted(written) and written[-1] == 59  # the newest frame is never the one dropped


def test_stop_finishes_the_frame_in_flight_and_writes_it():
    stop = threading.Event()
    seen = []

    def process(img):
        seen.append(int(img[0, 0, 0]))
        if len(seen) == 5:
            stop.set()  # as Ctrl-C would, mid-frame
        return img

    sink = ListSink()
    stats = run_stream(frames(100), process, sink, stop=stop)
    assert stats.processed == 5 and [i for i, _ in sink.got] == [0, 1, 2, 3, 4]


def test_per_item_errors_become_failures():
    def process(img):
        if int(img[0, 0, 0]) == 3:
            raise DFNError("f3: too large")
        return img

    class Src:
        live = False

        def __iter__(self):
            yield Failure("bad.png", "corrupt")
            yield from frames(6)

    sink = ListSink(fail_on={4})
    stats = run_stream(Src(), process, sink, per_item_errors=True)
    assert [i for i, _ in sink.got] == [0, 1, 2, 5]
    assert sorted((f.name, f.reason) for f in stats.failures) == [
        ("bad.png", "corrupt"), ("f3", "too large"), ("f4", "cannot write")]


def test_stream_errors_propagate_and_stop():
    sink = ListSink(fail_on={2})
    with pytest.raises(DFNError, match="cannot write"):
        run_stream(frames(1000), invert, sink)
    assert len(sink.got) == 2

    class Broken:
        live = False

        def __iter__(self):
            yield from frames(3)
            raise DFNError("camera: unplugged")

    with pytest.raises(DFNError, match="unplugged"):
        run_stream(Broken(), invert, ListSink())


def test_frame_queue_drop_keeps_end_marker():
    q = FrameQueue(1, drop=True)
    q.put("a")
    q.put("b")
    q.put(DONE)  # the end marker is never dropped nor refused, and drops nothing
    assert q.dropped == 1 and [q.get(), q.get()] == ["b", DONE]


def test_frame_queue_blocks_until_stopped():
    q, stop = FrameQueue(1), threading.Event()
    q.put("a")
    threading.Timer(0.1, stop.set).start()
    assert q.put("b", stop) is False and q.get() == "a" and q.get(stop) is None


# --- sinks -------------------------------------------------------------------------------------------


read_all = read_video  # shared with test_enhance: every frame of a video file, and its fps


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name", ["out.mp4", "out.avi", "out.mkv"])
def test_video_sink_writes_atomically(tmp_path, name):
    sink = VideoFileSink(tmp_path / name, fps=15)
    for i in range(4):
        sink.write(Frame(None, i), np.full((32, 48, 3), 40 * i, np.uint8))
        assert not (tmp_path / name).exists()  # only the hidden temp file while writing
    sink.close()
    got, fps = read_all(tmp_path / name)
    assert len(got) == 4 and got[0].shape == (32, 48, 3) and fps == pytest.approx(15)
    assert sink.outputs == [str(tmp_path / name)] and leftovers(tmp_path) == []


def test_video_sink_odd_size_and_codec_fallback(tmp_path):
    logs = []
    sink = VideoFileSink(tmp_path / "clip.webm", fps=10, log=logs.append)
    for i in range(3):
        sink.write(Frame(None, i), np.full((33, 47, 3), 100, np.uint8))
    sink.close()
    final = Path(sink.outputs[0])
    got, _ = read_all(final)
    assert len(got) == 3 and got[0].shape == (32, 46, 3)  # encoders need even sizes
    assert any("even" in m for m in logs)
    assert final.suffix in (".webm", ".avi") and leftovers(tmp_path) == []


def test_video_sink_abort_and_empty_close_leave_nothing(tmp_path):
    sink = VideoFileSink(tmp_path / "a.mp4", fps=10)
    sink.write(Frame(None, 0), np.zeros((16, 16, 3), np.uint8))
    sink.abort()
    empty = VideoFileSink(tmp_path / "b.mp4", fps=10)
    empty.close()
    assert list(tmp_path.iterdir()) == []


def test_video_roundtrip_through_the_pipeline(tmp_path):
    src_path = write_video(tmp_path / "in.avi", colour_frames(6, (40, 56)), fps=8, fourcc="MJPG")
    source = VideoSource(src_path)
    sink = VideoFileSink(tmp_path / "out" / "in.mp4", source.fps)
    stats = run_stream(source, lambda img: img[:, ::-1].copy(), sink)
    sink.close()
    source.close()
    got, fps = read_all(tmp_path / "out" / "in.mp4")
    assert stats.written == 6 and len(got) == 6 and fps == pytest.approx(8) and got[0].shape == (40, 56, 3)


def test_image_sink_creates_folders(tmp_path):
    sink = ImageFileSink()
    dst = tmp_path / "a" / "b" / "x.png"
    sink.write(Frame(None, 0, tag=dst), np.full((5, 7, 3), 9, np.uint8))
    assert cv2.imread(str(dst)).shape == (5, 7, 3) and sink.outputs == [str(dst)]
    assert leftovers(dst.parent) == []


def test_video_sink_removes_what_a_killed_run_left(tmp_path):
    dead = 4194304  # above Linux's pid_max: never a running process
    stale = [tmp_path / f".clip.mp4.{dead}.part.mp4", tmp_path / f".dfn-probe-{dead}-mp4v.mp4",
             tmp_path / f".clip.avi.{dead}.part.avi"]
    alive = tmp_path / ".clip.mp4.1.part.mp4"  # pid 1 is running: maybe another dfn writing right now
    for p in stale + [alive]:
        p.write_bytes(b"half")
    sink = VideoFileSink(tmp_path / "clip.mp4", fps=10)
    sink.write(Frame(None, 0), np.zeros((16, 16, 3), np.uint8))
    sink.close()
    assert leftovers(tmp_path) == [alive.name] and (tmp_path / "clip.mp4").is_file()
