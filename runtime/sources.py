"""Frame sources: image lists, video files and live captures (V4L2, CSI, RTSP, GStreamer).

A source is an iterable of :class:`Frame` (uint8 RGB) and, for batches, :class:`Failure` records for
inputs that could not be read, so one bad file never stops a batch. Live sources reconnect with
exponential backoff when the stream drops, then end cleanly.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import file_problem, quiet_opencv, read_image
from deepfusionnet.runtime.uris import Location, parse_source

DEFAULT_FPS = 30.0
# FFmpeg (inside OpenCV) logs its own lines for a broken file ("moov atom not found"); ours says it in
# one line. Read when the first capture opens; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@dataclass
class Frame:
    """One frame: ``image`` is uint8 ``(H, W, 3)`` RGB; ``tag`` is whatever the sink needs (e.g. a path)."""

    image: np.ndarray
    index: int
    name: str = ""
    tag: Any = None
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Failure:
    """An input that could not be processed, and why (one line)."""

    name: str
    reason: str

    def to_json(self) -> dict:
        return {"input": self.name, "reason": self.reason}


def has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


class ImageListSource:
    """Images read one after another; a file that cannot be read becomes a :class:`Failure`."""

    live = False
    fps = None

    def __init__(self, items: Sequence[tuple[Path, Any]], max_pixels: int | None = None) -> None:
        self.items = list(items)
        self.length = len(self.items)
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[Frame | Failure]:
        for i, (path, tag) in enumerate(self.items):
            try:
                img = read_image(path) if self.max_pixels is None else read_image(path, self.max_pixels)
            except DFNError as exc:
                yield Failure(str(path), _reason(exc, path))
                continue
            yield Frame(img, i, str(path), tag)

    def close(self) -> None:
        pass


def _reason(exc: Exception, path: Path | str) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


class VideoSource:
    """A video file. ``loop`` restarts it at the end and ``realtime`` paces reads at its fps, which
    together simulate a live camera (frames the pipeline cannot keep up with are dropped)."""

    def __init__(self, path: str | Path, loop: bool = False, realtime: bool = False,
                 max_frames: int | None = None) -> None:
        self.path = Path(path)
        self.loop, self.realtime, self.max_frames = loop, realtime, max_frames
        self.live = loop or realtime
        problem = file_problem(self.path)
        if problem in ("no such file", "empty file (0 bytes)"):
            raise DFNError(f"{self.path}: {problem.replace('file', 'video file', 1)}")
        if problem:  # a FIFO or device would block OpenCV's open
            raise DFNError(f"{self.path}: {problem}")
        with quiet_opencv():
            self.cap = cv2.VideoCapture(str(self.path))
            ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok or first is None:
            self.cap.release()
            raise DFNError(f"{self.path}: cannot read any frame (broken file, or a codec this OpenCV lacks)")
        self._first: np.ndarray | None = first
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = None if self.live else (count if count > 0 else None)
        if max_frames is not None:
            self.length = min(self.length or max_frames, max_frames)
        self.size = first.shape[:2]

    def __iter__(self) -> Iterator[Frame]:
        start, n = time.monotonic(), 0
        while self.max_frames is None or n < self.max_frames:
            if self._first is not None:
                bgr, self._first = self._first, None
            else:
                ok, bgr = self.cap.read()
                if not ok:
                    if not self.loop or n == 0:
                        return
                    self.cap.release()  # reopening rewinds reliably; seeking does not for every codec
                    self.cap = cv2.VideoCapture(str(self.path))
                    ok, bgr = self.cap.read()
                    if not ok:
                        return
            if self.realtime:
                delay = start + n / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), n, str(self.path))
            n += 1

    def close(self) -> None:
        self.cap.release()


def csi_pipeline(sensor: str | int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline jetson-utils uses for ``csi://N``: Argus camera -> BGR appsink."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width=(int){width}, "
            f"height=(int){height}, framerate=(fraction){fps}/1, format=(string)NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! videoconvert ! "
            "video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")


def _with_appsink(pipeline: str) -> str:
    if "appsink" in pipeline:
        return pipeline
    return f"{pipeline} ! videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"


def capture_opener(loc: Location) -> Callable[[], Any]:
    """A function that opens ``loc`` as a ``cv2.VideoCapture`` (called again on every reconnect)."""
    opt = loc.options

    def need_gstreamer() -> None:
        if not has_gstreamer():
            raise DFNError(f"{loc.text}: this OpenCV build has no GStreamer support (on Jetson use the system "
                           "python3-opencv from JetPack, e.g. a venv made with --system-site-packages)")

    if loc.kind == "csi":
        need_gstreamer()
        pipe = csi_pipeline(loc.target, int(opt.get("width", 1280)), int(opt.get("height", 720)),
                            int(float(opt.get("fps", opt.get("framerate", 30)))), int(opt.get("flip", 0)))
        return lambda: cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER)
    if loc.kind == "gstreamer":
        need_gstreamer()
        pipe = _with_appsink(loc.target)
        return lambda: cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER)
    if loc.kind == "v4l2":
        if not Path(loc.target).exists():
            raise DFNError(f"{loc.text}: no such camera device {loc.target}")

        def open_v4l2():
            cap = cv2.VideoCapture(loc.target, cv2.CAP_V4L2)
            if "width" in opt:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(opt["width"]))
            if "height" in opt:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(opt["height"]))
            if "fps" in opt:
                cap.set(cv2.CAP_PROP_FPS, float(opt["fps"]))
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap

        return open_v4l2
    if loc.kind == "rtsp":
        def open_stream():
            cap = cv2.VideoCapture(loc.target, cv2.CAP_FFMPEG)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap

        return open_stream
    raise DFNError(f"{loc.text}: not a live source")


class CaptureSource:
    """A live capture. Reads run flat out (the pipeline keeps only the newest frame); when a read fails
    the capture is reopened up to ``reconnect`` times with doubling waits, then the source ends."""

    live = True
    length = None

    def __init__(self, opener: Callable[[], Any], name: str, reconnect: int = 5, backoff: float = 0.5,
                 max_frames: int | None = None, log: Callable[[str], None] | None = None) -> None:
        self.opener, self.name = opener, name
        self.reconnect, self.backoff, self.max_frames = reconnect, backoff, max_frames
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lost = False
        with quiet_opencv():  # a URL OpenCV cannot open is our one line, not its WARN lines
            self.cap = opener()
            ok, first = (self.cap.read() if self.cap is not None and self.cap.isOpened() else (False, None))
        if not ok or first is None:
            self._release()
            raise DFNError(f"{name}: cannot open the source or read a first frame")
        self._first: np.ndarray | None = first
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        self.size = first.shape[:2]
        self._closed = False

    def _release(self) -> None:
        if self.cap is not None:
            try:
                self.cap.release()
            except Exception:  # a capture already torn down by its backend
                pass
        self.cap = None

    def _reopen(self) -> bool:
        wait = self.backoff
        for attempt in range(1, self.reconnect + 1):
            if self._closed:
                return False
            self.log(f"{self.name}: stream lost; reconnecting in {wait:.1f} s ({attempt}/{self.reconnect})")
            time.sleep(wait)
            wait *= 2
            self._release()
            try:
                with quiet_opencv():
                    self.cap = self.opener()
            except Exception:
                self.cap = None
            if self.cap is not None and self.cap.isOpened():
                ok, bgr = self.cap.read()
                if ok and bgr is not None:
                    self._first = bgr
                    self.log(f"{self.name}: reconnected")
                    return True
        self.log(f"{self.name}: source gone after {self.reconnect} reconnect attempts; stopping")
        self.lost = True
        return False

    def __iter__(self) -> Iterator[Frame]:
        n = 0
        while not self._closed and (self.max_frames is None or n < self.max_frames):
            if self._first is not None:
                bgr, self._first = self._first, None
            else:
                ok, bgr = self.cap.read() if self.cap is not None else (False, None)
                if not ok or bgr is None:
                    if not self._reopen():
                        return
                    continue
            if bgr.ndim == 2:
                bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), n, self.name)
            n += 1

    def close(self) -> None:
        self._closed = True
        self._release()


def open_source(loc: Location | str, *, loop: bool = False, max_frames: int | None = None,
                reconnect: int = 5, backoff: float = 0.5):
    """Open a video file or live source named by ``loc`` (images and folders go through ImageListSource)."""
    if isinstance(loc, str):
        loc = parse_source(loc)
    if loc.kind == "video":
        return VideoSource(loc.path, loop=loop, realtime=loop, max_frames=max_frames)
    if loc.live:
        return CaptureSource(capture_opener(loc), loc.text, reconnect, backoff, max_frames)
    raise DFNError(f"{loc.text}: a {loc.kind} is not a stream source")
