"""Naming frame sources and sinks the way jetson-utils does: paths, folders and URIs.

``parse_source`` / ``parse_sink`` turn a command-line word into a :class:`Location`; nothing here opens
anything, so it is cheap to call while planning a run and easy to test.

==========================  ==========  =================================================================
word                        kind        what it means
==========================  ==========  =================================================================
``night.png``               image       one image (PNG, JPEG, TIFF, BMP, WebP)
``frames/``                 folder      every image and video below it, recursively
``clip.mp4``                video       a video file
``file://clip.mp4``         (by path)   the same as the bare path
``v4l2:///dev/video0``      v4l2        a V4L2 (USB/UVC) camera; ``v4l2://0`` also works
``csi://0``                 csi         a MIPI CSI camera through GStreamer ``nvarguscamerasrc`` (Jetson)
``rtsp://host/stream``      rtsp        an RTSP stream (also ``rtmp://``, ``http(s)://`` streams)
``videotestsrc ! ...``      gstreamer   a raw GStreamer pipeline (anything containing ``!``)
``display://0``             display     an on-screen window (sinks only)
==========================  ==========  =================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".mts", ".m2ts", ".3gp", ".ogv", ".mjpeg", ".mjpg", ".y4m")
LIVE_KINDS = ("v4l2", "csi", "rtsp", "gstreamer")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "rtp", "srt")


@dataclass(frozen=True)
class Location:
    """A parsed source or sink word.

    ``target`` is a path (image, folder, video), a device path or sensor id (v4l2, csi), a URL (rtsp) or
    a pipeline string (gstreamer); ``options`` holds ``?key=value`` settings (e.g. ``width=1280``).
    """

    kind: str  # image | folder | video | v4l2 | csi | rtsp | gstreamer | display
    target: str
    text: str
    options: dict = field(default_factory=dict, compare=False)

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    @property
    def path(self) -> Path:
        return Path(self.target)

    def stem(self) -> str:
        """A file-name-safe short name, used to name outputs of live sources."""
        if self.kind in ("image", "video", "folder"):
            return self.path.stem or "output"
        base = {"v4l2": Path(self.target).name or "v4l2", "csi": f"csi{self.target}"}.get(self.kind)
        if base is None:
            base = urlsplit(self.target).hostname or self.kind if self.kind == "rtsp" else self.kind
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._") or self.kind


def is_pipeline(text: str) -> bool:
    return "!" in text and "://" not in text.split("!")[0]


def _options(query: str) -> dict:
    return dict(parse_qsl(query, keep_blank_values=True))


def _path_kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return ""


def parse_source(text: str) -> Location:
    """Classify an input word; raise :class:`DFNError` naming it when it cannot be a source."""
    text = str(text)
    if is_pipeline(text) and not Path(text).exists():  # a file may have "!" in its name
        return Location("gstreamer", text, text)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        parts = urlsplit(text)
        if scheme == "file":
            return parse_source(rest)
        if scheme == "v4l2":
            dev = (parts.netloc + parts.path) or "/dev/video0"
            if dev.isdigit():
                dev = f"/dev/video{dev}"
            return Location("v4l2", dev, text, _options(parts.query))
        if scheme == "csi":
            sensor = (parts.netloc + parts.path).strip("/") or "0"
            if not sensor.isdigit():
                raise DFNError(f"{text}: a CSI camera is named by its sensor id, e.g. csi://0")
            return Location("csi", sensor, text, _options(parts.query))
        if scheme in STREAM_SCHEMES:
            return Location("rtsp", text, text)
        if scheme == "display":
            raise DFNError(f"{text}: a display is an output, not an input")
        raise DFNError(f"{text}: unknown source scheme {scheme!r} (use a path, file://, v4l2://, csi://, rtsp:// "
                       "or a GStreamer pipeline)")
    path = Path(text)
    if not path.exists():
        raise DFNError(f"{text}: no such file or folder")
    kind = _path_kind(path)
    if not kind:
        raise DFNError(f"{text}: not an image, video or folder (images: {', '.join(IMAGE_SUFFIXES)}; "
                       f"videos: {', '.join(VIDEO_SUFFIXES[:6])}, ...)")
    return Location(kind, text, text)


def parse_sink(text: str) -> Location:
    """Classify an ``-o`` word: a display, a GStreamer pipeline, a video or image file, or a folder."""
    text = str(text)
    if is_pipeline(text):
        return Location("gstreamer", text, text)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme == "display":
            return Location("display", rest.strip("/") or "0", text)
        if scheme == "file":
            return parse_sink(rest)
        raise DFNError(f"{text}: unsupported output {scheme}:// (outputs: a folder, an image or video file, "
                       "display://0 or a GStreamer pipeline)")
    suffix = Path(text).suffix.lower()
    if suffix in IMAGE_SUFFIXES and not Path(text).is_dir():
        return Location("image", text, text)
    if suffix in VIDEO_SUFFIXES and not Path(text).is_dir():
        return Location("video", text, text)
    return Location("folder", text, text)
