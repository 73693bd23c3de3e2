"""runtime/images.py on every kind of file a night camera or a photo folder produces.

Valid oddities (16-bit, gray, RGBA, palette, CMYK, EXIF-rotated, 1x1, thin) must decode at the right
size and values; broken files must raise one DFNError naming the file, never anything else.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import read_image, write_image
from helpers import huge_png

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
_YY, _XX = np.meshgrid(np.linspace(0, 255, 20), np.linspace(0, 255, 30), indexing="ij")
SMOOTH = np.dstack([_YY, _XX, np.full((20, 30), 90.0)]).astype(np.uint8)  # JPEG-friendly, for lossy round trips


def _close(a: np.ndarray, b: np.ndarray, mean_tol: float) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(float) - b.astype(float)).mean()) <= mean_tol


# ---------------------------------------------------------------- valid but unusual images


def test_16bit_png_rgb_and_gray_round_to_8bit(tmp_path):
    v = RNG.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    v[0, 0] = 200  # a dark 16-bit value must not collapse to 0 (Pillow alone truncates)
    cv2.imwrite(str(tmp_path / "c.png"), v[..., ::-1])  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "g.png"), v[..., 0])
    expect = np.round(v / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), expect)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(expect[..., :1], 3, axis=2))
    assert read_image(tmp_path / "c.png")[0, 0].tolist() == [1, 1, 1]


def test_16bit_tiff_rgb_and_gray(tmp_path):
    v = RNG.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c.tif"), v[..., ::-1])
    Image.fromarray(v[..., 1]).save(tmp_path / "g.tiff")  # Pillow's own 16-bit gray TIFF
    expect = np.round(v / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), expect)
    np.testing.assert_array_equal(read_image(tmp_path / "g.tiff"), np.repeat(expect[..., 1:2], 3, axis=2))


def test_16bit_rgba_png_composites_like_8bit(tmp_path):
    v = np.full((4, 5, 4), 65535, np.uint16)
    v[..., 3] = 0
    v[0, 0, 3] = 65535
    cv2.imwrite(str(tmp_path / "a.png"), v)
    out = read_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[1:].max() == 0


def test_gray_and_gray_alpha(tmp_path):
    g = RGB[..., 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA").save(tmp_path / "la.png")
    Image.fromarray(g).convert("1").save(tmp_path / "bw.png")
    for name in ("g.png", "la.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name), np.repeat(g[..., None], 3, axis=2))
    bw = read_image(tmp_path / "bw.png")
    assert bw.shape == (20, 30, 3) and set(np.unique(bw)) <= {0, 255}


def test_rgba_opaque_equals_rgb_and_transparent_is_black(tmp_path):
    a = np.full((20, 30, 1), 255, np.uint8)
    a[:5] = 0
    Image.fromarray(np.concatenate([RGB, a], axis=2)).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[5:], RGB[5:])
    assert out[:5].max() == 0


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.fromarray(SMOOTH).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    expect = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expect)
    out = read_image(tmp_path / "pt.png")
    idx = np.asarray(pal)
    np.testing.assert_array_equal(out[idx != 0], expect[idx != 0])
    assert out[idx == 0].max(initial=0) == 0 and (idx == 0).any()


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(SMOOTH).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert _close(read_image(tmp_path / "c.jpg"), SMOOTH, 4.0)


# Expected upright picture for each EXIF orientation, written independently of the code under test.
UPRIGHT = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
           5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(np.transpose(a, (1, 0, 2)), 2), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_exact(tmp_path, orientation):
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    out = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, UPRIGHT[orientation](RGB))
    np.testing.assert_array_equal(out, np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png"))))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg(tmp_path, orientation):
    im = Image.fromarray(SMOOTH)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    assert _close(read_image(tmp_path / "o.jpg"), UPRIGHT[orientation](SMOOTH), 3.0)


def test_broken_exif_orientation_is_ignored(tmp_path):
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = 77  # out of range
    im.save(tmp_path / "o.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), RGB)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif", ".webp"])
@pytest.mark.parametrize("h,w", [(1, 1), (1, 37), (41, 1), (7, 13), (2, 3)])
def test_tiny_thin_and_odd_sizes(tmp_path, suffix, h, w):
    img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(img).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    out = read_image(path)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    if suffix != ".jpg":
        np.testing.assert_array_equal(out, img)


def test_wrong_extension_is_read_by_content(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "really-a-png.jpg", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "really-a-png.jpg"), RGB)


def test_real_samples_read(samples):
    for p in sorted(samples.iterdir()):
        img = read_image(p)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.size > 1000


# ---------------------------------------------------------------- broken files: one DFNError each


def huge_jpeg(w: int = 65_000, h: int = 65_000) -> bytes:
    """A real small JPEG with its SOF0 size fields rewritten to claim w x h."""
    import io

    buf = io.BytesIO()
    Image.fromarray(SMOOTH).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def huge_bmp(w: int = 100_000, h: int = 100_000) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", w, h)
    return bytes(data)


def _photo_bytes(fmt: str) -> bytes:
    import io

    img = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noise: nothing compresses away
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def _expect_error(path: Path, *words: str) -> str:
    with pytest.raises(DFNError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_folder_empty(tmp_path):
    _expect_error(tmp_path / "nope.png", "no such file")
    _expect_error(tmp_path, "folder")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _expect_error(tmp_path / "empty.jpg", "empty")


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("BMP", ".bmp"),
                                        ("WEBP", ".webp")])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated(tmp_path, fmt, suffix, keep):
    data = _photo_bytes(fmt)
    path = tmp_path / f"t{suffix}"
    path.write_bytes(data[: max(8, int(len(data) * keep))])
    _expect_error(path)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("shopping list\n" * 20)
    _expect_error(tmp_path / "notes.png", "not an image")


@pytest.mark.parametrize("make,suffix,claim", [(huge_png, ".png", "10,000 MP"), (huge_jpeg, ".jpg", "4,225 MP"),
                                               (huge_bmp, ".bmp", "10,000 MP")])
def test_huge_header_refused_before_decoding(tmp_path, make, suffix, claim):
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(make())
    _expect_error(path, "refused before decoding", claim)


def test_max_pixels_limit_names_dimensions(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    msg = str(pytest.raises(DFNError, read_image, tmp_path / "a.png", max_pixels=100).value)
    assert "30x20" in msg and "refused before decoding" in msg
    assert read_image(tmp_path / "a.png", max_pixels=600).shape == (20, 30, 3)


def test_raised_limit_beyond_pillows_own(tmp_path):
    # 20000 x 9000 = 180 MP: over Pillow's built-in bomb threshold, under ours; the limit check passes
    # and decoding then finds the truncated data.
    (tmp_path / "big.png").write_bytes(huge_png(20_000, 9_000))
    msg = str(pytest.raises(DFNError, read_image, tmp_path / "big.png", max_pixels=200_000_000).value)
    assert "truncated" in msg or "corrupt" in msg
    msg = str(pytest.raises(DFNError, read_image, tmp_path / "big.png", max_pixels=100_000_000).value)
    assert "20000x9000" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    os.chmod(tmp_path / "a.png", 0)
    _expect_error(tmp_path / "a.png", "permission denied")


# ---------------------------------------------------------------- generated corpus (hypothesis)

SEEDS = {fmt: _photo_bytes(fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF", "WEBP")}


@st.composite
def broken_bytes(draw):
    kind = draw(st.sampled_from(["random", "prefix", "truncate", "flip"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=2000))
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    if kind == "prefix":  # a real header followed by junk
        return seed[: draw(st.integers(8, 64))] + draw(st.binary(max_size=500))
    if kind == "truncate":
        return seed[: draw(st.integers(1, len(seed) - 1))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 20))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=broken_bytes(), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".webp"]))
def test_any_bytes_give_an_image_or_one_dfn_error(tmp_path, data, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning noise on the user's terminal either
            img = read_image(path)
    except DFNError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:  # flipped bytes in pixel data can still decode: then it must be a proper image
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and img.flags.c_contiguous


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 48), w=st.integers(1, 48),
       mode=st.sampled_from(["RGB", "L", "RGBA", "LA", "P", "I;16", "CMYK"]),
       fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "BMP", "WEBP"]))
def test_any_valid_size_and_mode_reads_at_its_size(tmp_path, h, w, mode, fmt):
    ok_modes = {"PNG": {"RGB", "L", "RGBA", "LA", "P", "I;16"}, "TIFF": {"RGB", "L", "RGBA", "P", "I;16", "CMYK"},
                "JPEG": {"RGB", "L", "CMYK"}, "BMP": {"RGB", "L", "P"}, "WEBP": {"RGB", "RGBA"}}
    if mode not in ok_modes[fmt]:
        return
    base = Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    im = (Image.fromarray(RNG.integers(0, 65536, (h, w), dtype=np.uint16)) if mode == "I;16"
          else base.convert(mode) if mode != "P" else base.convert("P", palette=Image.Palette.ADAPTIVE))
    path = tmp_path / f"x.{fmt.lower()}"
    im.save(path, format=fmt)
    out = read_image(path)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


# ---------------------------------------------------------------- writing


def test_write_image_round_trip_and_no_temporaries(tmp_path):
    for suffix in (".png", ".bmp", ".tif", ".webp"):
        write_image(tmp_path / f"o{suffix}", RGB)
        if suffix != ".webp":
            np.testing.assert_array_equal(read_image(tmp_path / f"o{suffix}"), RGB)
    write_image(tmp_path / "sub" / "o.jpg", SMOOTH)
    assert _close(read_image(tmp_path / "sub" / "o.jpg"), SMOOTH, 3.0)
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert not [n for n in names if n.startswith(".") or n.endswith(".part")], names
    mode = (tmp_path / "o.png").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_write_image_unknown_suffix_is_a_clear_error(tmp_path):
    with pytest.raises(DFNError, match=r"cannot write \.xyz"):
        write_image(tmp_path / "o.xyz", RGB)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "o.png"
    write_image(target, RGB)
    before = target.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, SMOOTH)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_rewrite_removes_temporaries_left_by_a_killed_write(tmp_path):
    from deepfusionnet.runtime.images import temporary_name

    dead = 4194304  # above Linux's pid_max: never a running process
    (tmp_path / temporary_name("o.png", dead)).write_bytes(b"half")  # what kill -9 mid-write leaves
    other = temporary_name("other.png", dead)  # another file's: not ours to judge
    (tmp_path / other).write_bytes(b"half")
    write_image(tmp_path / "o.png", RGB)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other, "o.png"]
