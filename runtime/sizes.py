"""``WIDTHxHEIGHT`` text, as every ``--size``/``--shape`` option and bench grid writes a frame size."""

from __future__ import annotations

from deepfusionnet.errors import DFNError

MAX_PIXELS = 200_000_000  # as images.py refuses larger pictures before decoding


def parse_size(text: str, minimum: int = 1, what: str = "size") -> tuple[int, int]:
    """``"600x400"`` (or ``"600*400"``) -> ``(600, 400)``, width then height; a one-line
    :class:`DFNError` naming ``what`` for anything else, for sides under ``minimum`` and for sizes
    over :data:`MAX_PIXELS`."""
    try:
        w, h = (int(v) for v in str(text).lower().replace("*", "x").split("x"))
    except ValueError:
        raise DFNError(f"bad {what} {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < minimum or h < minimum:
        raise DFNError(f"bad {what} {text!r}: at least {minimum}x{minimum}")
    if w * h > MAX_PIXELS:
        raise DFNError(f"bad {what} {text!r}: over {MAX_PIXELS // 1_000_000} million pixels")
    return w, h
