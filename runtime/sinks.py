"""Frame sinks: image files, a video file, a window, a GStreamer pipeline.

Every sink takes ``write(frame, rgb)`` with uint8 RGB and ends with ``close()`` (keep what was written)
or ``abort()`` (leave nothing behind). Files appear atomically: images through
:func:`~deepfusionnet.runtime.images.write_image`, videos through a hidden temporary file in the
destination folder that is renamed on ``close()``, so a reader never sees half a file under the real
name and no temporary file outlives a run.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import owner_tag, remove_abandoned_temporaries, write_image
from deepfusionnet.runtime.sources import Frame, has_gstreamer

# Codecs tried per container, in order; the last resort is Motion-JPEG in an AVI, which every
# OpenCV build can write. Each candidate is checked by writing and reopening a short probe file.
CODECS: dict[str, tuple[str, ...]] = {
    ".mp4": ("mp4v", "avc1"), ".m4v": ("mp4v", "avc1"), ".mov": ("mp4v", "avc1", "MJPG"),
    ".avi": ("MJPG", "XVID"), ".mkv": ("mp4v", "MJPG", "XVID"), ".webm": ("VP80", "VP90"),
}
FALLBACK = (".avi", "MJPG")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ImageFileSink:
    """Writes each frame to the path in ``frame.tag`` (atomically)."""

    wants_stop = False

    def __init__(self) -> None:
        self.outputs: list[str] = []

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        write_image(frame.tag, rgb)
        self.outputs.append(str(frame.tag))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def probe_codec(folder: Path, suffix: str, fourcc: str, size: tuple[int, int], fps: float) -> bool:
    """Whether ``fourcc`` in a ``suffix`` container can be written at ``size`` (H, W) and read back."""
    h, w = size
    probe = folder / f".dfn-probe-{owner_tag()}-{fourcc}{suffix}"
    try:
        writer = cv2.VideoWriter(str(probe), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if not writer.isOpened():
            return False
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = 128
        for _ in range(2):
            writer.write(img)
        writer.release()
        cap = cv2.VideoCapture(str(probe))
        ok, back = cap.read()
        cap.release()
        return bool(ok) and back is not None and back.shape[:2] == (h, w)
    except cv2.error:
        return False
    finally:
        probe.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Delete what a killed run (``kill -9``) left while writing ``name`` in ``folder``: its hidden
    ``.NAME.PID-HOST.part.EXT`` file and codec probes, when the process that made them is gone (a run
    writing the same name right now keeps its files)."""
    remove_abandoned_temporaries(folder, f".{glob.escape(Path(name).stem)}.*.part.*", ".dfn-probe-*-*")


class VideoFileSink:
    """A video file at the source's fps; opened at the first frame, when the output size is known.

    If the container's codecs cannot be written here, falls back to Motion-JPEG AVI and says so; the
    final path is then ``path`` with ``.avi`` (see :attr:`path` after the first write).
    """

    wants_stop = False

    def __init__(self, path: str | Path, fps: float, log: Callable[[str], None] = _log) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.log = log
        self.writer = None
        self.tmp: Path | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.outputs: list[str] = []
        self.codec = ""

    def _open(self, size: tuple[int, int]) -> None:
        if size[0] % 2 or size[1] % 2:
            # 4:2:0 encoders (and OpenCV's FFmpeg writer, whatever the codec) need even sizes; say so
            # instead of letting the encoder rescale or fail.
            even = (size[0] - size[0] % 2, size[1] - size[1] % 2)
            self.log(f"{self.path}: video frames must have even sizes; writing {even[1]}x{even[0]} "
                     f"(the last row/column of {size[1]}x{size[0]} is cropped)")
            size = even
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder, self.path.name)
        suffix = self.path.suffix.lower()
        candidates = [(suffix, c) for c in CODECS.get(suffix, ())] + [FALLBACK]
        for cand_suffix, fourcc in candidates:
            if probe_codec(folder, cand_suffix, fourcc, size, self.fps):
                break
        else:
            raise DFNError(f"{self.path}: this OpenCV build cannot write video here (tried "
                           f"{', '.join(c for _, c in candidates)})")
        if cand_suffix != suffix:
            final = self.path.with_suffix(cand_suffix)
            self.log(f"{self.path}: no {suffix} encoder in this OpenCV build; writing {final} ({fourcc}) instead")
            self.path = final
        self.codec = fourcc
        self.tmp = folder / f".{self.path.name}.{owner_tag()}.part{cand_suffix}"
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), self.fps, (size[1], size[0]))
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise DFNError(f"{self.path}: cannot open the video writer ({fourcc})")
        self.size = size

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        if self.writer is None:
            self._open(rgb.shape[:2])
        h, w = self.size
        if rgb.shape[:2] != self.size:
            if rgb.shape[0] - h in (0, 1) and rgb.shape[1] - w in (0, 1):
                rgb = rgb[:h, :w]  # odd size cropped to even
            else:  # a camera that came back at another resolution
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place (also after Ctrl-C: what was written is kept)."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return
        os.replace(self.tmp, self.path)
        self.outputs.append(str(self.path))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


class DisplaySink:
    """An OpenCV window; ``q`` or Esc in the window stops the run."""

    def __init__(self, title: str = "dfn enhance") -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise DFNError("display://: no display here (DISPLAY is not set); write to a file or folder instead")
        self.title = title
        self.wants_stop = False
        self.outputs: list[str] = []
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise DFNError("display://: this OpenCV build has no GUI (opencv-python-headless); "
                           "install opencv-python, or on Jetson use JetPack's python3-opencv") from None

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
            self.wants_stop = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

    abort = close


class GStreamerSink:
    """Frames pushed into a GStreamer pipeline through ``appsrc`` (e.g. an encoder and ``rtspclientsink``)."""

    wants_stop = False

    def __init__(self, pipeline: str, fps: float) -> None:
        if not has_gstreamer():
            raise DFNError(f"{pipeline}: this OpenCV build has no GStreamer support")
        self.pipeline = pipeline if pipeline.lstrip().startswith("appsrc") else f"appsrc ! videoconvert ! {pipeline}"
        self.fps = fps
        self.writer = None
        self.outputs: list[str] = []

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        if self.writer is None:
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(self.pipeline, cv2.CAP_GSTREAMER, 0, self.fps, (w, h))
            if not self.writer.isOpened():
                raise DFNError(f"{self.pipeline}: GStreamer could not start this output pipeline")
            self.outputs.append(self.pipeline)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    abort = close
