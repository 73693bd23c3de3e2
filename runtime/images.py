"""Reading and writing images: any common format in, uint8 RGB out; atomic writes.

Decoding goes through Pillow, which reads the header first, so an image that claims enormous
dimensions is refused before any pixel is decoded. EXIF orientation is honoured; 16-bit, grayscale,
RGBA, palette and CMYK images all come out as 8-bit RGB.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from deepfusionnet.errors import DFNError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 200_000_000
_UMASK = os.umask(0)
os.umask(_UMASK)  # ~ a 16k x 12k frame; bigger is refused before decoding


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_uint8_rgb(arr: np.ndarray, mode: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr, 0.0, 1.0) * 255.0 + 0.5
        elif arr.dtype in (np.uint16, np.int32, np.uint32) or mode.startswith("I"):
            # 16-bit data (Pillow hands 16-bit gray out as int32): keep the top 8 bits.
            peak = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") or arr.dtype == np.uint16 else 255.0
            arr = np.clip(arr.astype(np.float64) * (255.0 / peak) + 0.5, 0, 255)
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 4:  # composite on black: a night frame's transparent parts are dark
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    elif arr.shape[2] == 2:  # gray + alpha
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as uint8 ``(H, W, 3)`` RGB, or raise :class:`DFNError` naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DFNError(f"{path}: no such file")
    if path.is_dir():
        raise DFNError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise DFNError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise DFNError(
                    f"{path}: image claims {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP "
                    "limit (raise it with --max-pixels if this is real)"
                )
            if w < 1 or h < 1:
                raise DFNError(f"{path}: image has no pixels ({w}x{h})")
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "L", "LA", "RGBa", "La"):
                im = im.convert("RGBA" if "A" in mode or "a" in mode or (mode == "P" and "transparency" in im.info) else "RGB")
                mode = im.mode
            arr = np.asarray(im)
    except DFNError:
        raise
    except Image.DecompressionBombError as exc:
        raise DFNError(f"{path}: refused, {exc}") from None
    except UnidentifiedImageError:
        arr = _read_with_opencv(path)
        if arr is None:
            raise DFNError(f"{path}: not an image file, or a format that cannot be read") from None
        return arr
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise DFNError(f"{path}: corrupt or truncated image ({exc})") from None
    return _to_uint8_rgb(arr, mode)


def _read_with_opencv(path: Path) -> np.ndarray | None:
    """Fallback for what Pillow does not know (e.g. some 16-bit multi-channel TIFFs)."""
    buf = np.fromfile(path, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        return None
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return _to_uint8_rgb(img, "")


def encode_image(rgb: np.ndarray, suffix: str) -> bytes:
    """Encode uint8 RGB as the format named by ``suffix`` (".png", ".jpg", ...)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix.lower(), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise DFNError(f"cannot encode an image as {suffix}")
    return buf.tobytes()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give outputs normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write uint8 RGB to ``path`` atomically; the format follows the suffix."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(rgb, path.suffix or ".png"))
