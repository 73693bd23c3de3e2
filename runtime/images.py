"""Reading and writing images: any common format in, uint8 RGB out; atomic writes.

Decoding goes through Pillow, which reads the header first, so an image that claims enormous
dimensions is refused before any pixel is decoded. EXIF orientation is honoured; 16-bit, grayscale,
RGBA, palette and CMYK images all come out as 8-bit RGB.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import socket
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from deepfusionnet.errors import DFNError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 200_000_000  # ~ a 16k x 12k frame; bigger is refused before decoding
_UMASK = os.umask(0)
os.umask(_UMASK)


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_uint8_rgb(arr: np.ndarray, mode: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr, 0.0, 1.0) * 255.0 + 0.5
        elif arr.dtype in (np.uint16, np.int32, np.uint32) or mode.startswith("I"):
            # 16-bit data scaled with rounding; plain 32-bit integers ("I") are taken as 16-bit when
            # they exceed 255, else as 8-bit values.
            peak = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") or arr.dtype == np.uint16 else 255.0
            arr = np.clip(arr.astype(np.float64) * (255.0 / peak) + 0.5, 0, 255)
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 4:  # composite on black: a night frame's transparent parts are dark
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    elif arr.shape[2] == 2:  # gray + alpha, same rule
        alpha = arr[..., 1:2].astype(np.float32) / 255.0
        arr = np.repeat((arr[..., :1].astype(np.float32) * alpha + 0.5).astype(np.uint8), 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as uint8 ``(H, W, 3)`` RGB, or raise :class:`DFNError` naming the file.

    The size in the header is checked against ``max_pixels`` before any pixel is decoded. EXIF
    orientation is applied, so the array is the picture as a viewer shows it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise DFNError(f"{path}: is a folder, not an image")
    problem = file_problem(path)
    if problem:
        raise DFNError(f"{path}: {problem}")
    try:
        # Pillow warns about damaged metadata it skips; a good picture needs no such noise, and a
        # bad one gets its one-line error below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open_checked(path, max_pixels) as im:
                arr = _decode(path, im)
                orientation = _exif_orientation(im)
    except DFNError:
        raise
    except UnidentifiedImageError:
        arr = _read_with_opencv(path)
        if arr is None:
            raise DFNError(f"{path}: not an image file, or a format that cannot be read") from None
        return arr
    except PermissionError:
        raise DFNError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise DFNError(f"{path}: corrupt or truncated image ({_one_line(exc)})") from None
    return _orient(arr, orientation)


_NOT_REGULAR = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file, in words ("broken symbolic link (...)", "a FIFO ..."), or None.

    Decided from ``stat`` alone, never by opening: opening a FIFO waits for a writer forever, and reading a
    device may never end.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return missing_reason(path, exc)
    for is_kind, kind in _NOT_REGULAR:
        if is_kind(st.st_mode):
            return f"is {kind}, not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def missing_reason(path: str | Path, exc: OSError) -> str:
    """What an ``OSError`` from ``stat(path)`` means to a user: a link loop and a dangling link are not
    "no such file"."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (following the link leads back to it)"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _open_checked(path: Path, max_pixels: int):
    """``Image.open`` (header only) with our pixel limit in place of Pillow's bomb check."""
    from PIL import Image

    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; our limit is checked right
    # after, so only widen Pillow's (never narrow it) to let a user-raised --max-pixels through.
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1
    try:
        im = Image.open(path)  # reads the header only; DecompressionBombWarning is silenced by the caller
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        claims = f"{int(m.group(1)) / 1e6:,.0f} MP" if m else "too many pixels"
        raise DFNError(f"{path}: image header claims {claims}, above the {max_pixels / 1e6:,.0f} MP limit; "
                       "refused before decoding") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise DFNError(f"{path}: image header claims {w}x{h} = {w * h / 1e6:,.0f} MP, above the "
                       f"{max_pixels / 1e6:,.0f} MP limit; refused before decoding")
    if w < 1 or h < 1:
        im.close()
        raise DFNError(f"{path}: image has no pixels ({w}x{h})")
    return im


def _exif_orientation(im) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not lose an otherwise good picture
        return 1
    return value if 1 <= value <= 8 else 1


def _decode(path: Path, im) -> np.ndarray:
    """Pixels as uint8 RGB (H, W, 3), in file order (orientation not yet applied)."""
    tile = im.tile[0] if getattr(im, "tile", None) else None
    rawmode = (tile.args[0] if isinstance(tile.args, tuple) else tile.args) if tile else ""
    if im.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode:
        # Pillow truncates 16-bit colour to 8 bits; OpenCV keeps all 16 for proper rounding.
        # The size has already been checked, so decoding here is safe.
        arr = _read_with_opencv(path)
        if arr is not None:
            return arr
    im.load()
    mode = im.mode
    if mode not in ("RGB", "RGBA", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        keep_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if keep_alpha else "RGB")
        mode = im.mode
    return _to_uint8_rgb(np.asarray(im), mode)


_TRANSFORMS = {  # EXIF orientation -> what makes the stored pixels upright
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    if orientation in _TRANSFORMS:
        arr = np.ascontiguousarray(_TRANSFORMS[orientation](arr))
    return arr


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Keep OpenCV's own log lines off the terminal (libpng's "IHDR chunk shall be first", the FFmpeg
    backend's "can't be used to capture by name"): dfn's one-line error says what went wrong.
    ``DFN_DEBUG=1`` lets them through."""
    level = cv2.utils.logging.getLogLevel()
    if not os.environ.get("DFN_DEBUG"):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _read_with_opencv(path: Path) -> np.ndarray | None:
    """Fallback for what Pillow does not know (e.g. some 16-bit multi-channel TIFFs)."""
    buf = np.fromfile(path, np.uint8)
    with quiet_opencv():
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # keeps 16 bits and alpha
    if img is None:
        return None
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return _to_uint8_rgb(img, "")


def encode_image(rgb: np.ndarray, suffix: str) -> bytes:
    """Encode uint8 RGB as the format named by ``suffix`` (".png", ".jpg", ...)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix.lower() in (".jpg", ".jpeg") else []
    try:
        ok, buf = cv2.imencode(suffix.lower(), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    except cv2.error:  # OpenCV raises, rather than returning False, for a suffix it does not know
        ok = False
    if not ok:
        raise DFNError(f"cannot write {suffix or 'extension-less'} images; use one of {', '.join(IMAGE_SUFFIXES)}")
    return buf.tobytes()


# Temporaries are named for the process that writes them, ``.NAME.PID-HOST.RANDOM.part``, so that another
# run writing into the same folder can tell a live writer's in-flight file (left alone) from one that a
# killed process left behind (removed). A name without an owner is never judged abandoned.
_OWNED = re.compile(r"^\..+\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[A-Za-z0-9_]+\.part$")
# Video files and codec probes (runtime.sinks): ``.NAME.PID[-HOST].part.EXT``,
# ``.dfn-probe-PID[-HOST]-FOURCC.EXT``; names from before the host was recorded count as this host's.
_OWNED_VIDEO = re.compile(r"^\..+\.(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?\.part\.\w+$")
_OWNED_PROBE = re.compile(r"^\.dfn-probe-(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?-\w+\.\w+$")


def host_tag() -> str:
    """This machine, as a temporary's name records it (a shared network folder sees several machines)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag(pid: int | None = None) -> str:
    """``PID-HOST`` of this process (or of ``pid`` on this host), as temporaries' names carry it."""
    return f"{os.getpid() if pid is None else pid}-{host_tag()}"


def temporary_name(name: str, pid: int | None = None) -> str:
    """The name of a temporary for ``name`` written by this process (or by ``pid`` on this host)."""
    return f".{name}.{owner_tag(pid)}.{os.urandom(4).hex()}.part"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (someone else's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # someone else's process (or an impossible pid)
    return True


def is_abandoned(name: str) -> bool:
    """Whether the temporary called ``name`` is provably left over: its writer, named in it, is a process of
    this machine that no longer runs. Anything else (a live writer, another machine's, no owner) is not."""
    m = _OWNED.match(name) or _OWNED_VIDEO.match(name) or _OWNED_PROBE.match(name)
    if m is None or (m.group("host") is not None and m.group("host") != host_tag()):
        return False
    return not pid_alive(int(m.group("pid")))


def remove_abandoned_temporaries(folder: str | Path, *patterns: str) -> None:
    """Delete the temporaries in ``folder`` matching ``patterns`` (globs; default: every hidden file) whose
    writer is gone (:func:`is_abandoned`): what a ``kill -9`` mid-write left."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for pattern in patterns or (".*",):
        for path in folder.glob(pattern):
            if is_abandoned(path.name):
                path.unlink(missing_ok=True)


class WriteError(DFNError, OSError):
    """An output that could not be written, named by its final path (not by its hidden temporary)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        OSError.__init__(self, exc.errno, exc.strerror, str(path))
        self.message = f"{path}: cannot write it ({exc.strerror or exc})"

    def __str__(self) -> str:
        return self.message


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    An ``OSError`` (disk full, permission denied, read-only file system) becomes a :class:`WriteError` that
    names ``path``, also an ``OSError`` for callers that tolerate failed writes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from None
    # A write of this file cut short by kill -9 (nothing else can stop the clean-up below) left its
    # temporary behind; writing the file again is the moment to remove it.
    remove_abandoned_temporaries(path.parent, f".{glob.escape(path.name)}.*.part")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give outputs normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, DFNError):
            raise WriteError(path, exc) from None
        raise


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write uint8 RGB to ``path`` atomically; the format follows the suffix."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(rgb, path.suffix or ".png"))
