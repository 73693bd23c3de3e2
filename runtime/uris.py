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

import mimetypes
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import IMAGE_SUFFIXES, file_problem

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".mts", ".m2ts", ".3gp", ".ogv", ".mjpeg", ".mjpg", ".y4m")
# Pictures and videos people have that dfn cannot read or write: named so, instead of being skipped or
# taken for a folder name. Python's own MIME table (not the system's, which differs between machines)
# adds the rest.
UNSUPPORTED_MEDIA = (".gif", ".apng", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".psd", ".raw",
                     ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".exr", ".hdr", ".tga",
                     ".svg", ".ico", ".pgm", ".ppm", ".pbm", ".pnm")
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
    """Whether ``text`` is a GStreamer pipeline: elements joined by ``!``. A word without spaces that ends in
    an image or video suffix (``x!.png``) is a file name."""
    if "!" not in text or "://" in text.split("!")[0]:
        return False
    return any(c.isspace() for c in text) or not (is_media_path(text) or unsupported_media(text))


def is_media_path(text: str | Path) -> bool:
    """Whether the name ends in a suffix dfn reads and writes (an image or a video)."""
    return Path(text).suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


@lru_cache(maxsize=1)
def _mime_types() -> mimetypes.MimeTypes:
    return mimetypes.MimeTypes()  # Python's built-in table only: the same answer on every machine


def unsupported_media(text: str | Path) -> str | None:
    """The format's name (``"GIF"``) when ``text`` names a picture or video dfn cannot handle, else None."""
    suffix = Path(text).suffix.lower()
    if not suffix or suffix in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        return None
    mime = _mime_types().guess_type(f"x{suffix}")[0] or ""
    if suffix in UNSUPPORTED_MEDIA or mime.startswith(("image/", "video/")):
        return suffix[1:].upper()
    return None


def supported_formats() -> str:
    return f"images: {', '.join(IMAGE_SUFFIXES)}; videos: {', '.join(VIDEO_SUFFIXES[:6])}, ..."


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
    if path.is_dir():
        return Location("folder", text, text)
    problem = file_problem(path)
    if problem == "no such file":
        raise DFNError(f"{text}: no such file or folder")
    if problem and problem != "empty file (0 bytes)":  # an empty image or video is named when it is read
        raise DFNError(f"{text}: {problem}")
    kind = _path_kind(path)
    if not kind:
        fmt = unsupported_media(path)
        what = f"{fmt} files are not supported" if fmt else "not an image, video or folder"
        raise DFNError(f"{text}: {what} ({supported_formats()})")
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
    fmt = unsupported_media(text)
    if fmt and not Path(text).is_dir():  # not a folder to create: the user wanted a file of that format
        raise DFNError(f"-o {text}: cannot write {fmt} files ({supported_formats()}); or name a folder")
    return Location("folder", text, text)
