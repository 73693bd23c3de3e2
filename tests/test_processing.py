import numpy as np
import pytest

from deepfusionnet.runtime.processing import crop, pad_to_multiple, run_tiled, tile_grid, to_image, to_tensor


@pytest.mark.parametrize("h,w", [(1, 1), (3, 500), (401, 599), (400, 600)])
def test_pad_crop_roundtrip(h, w):
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    xp, size = pad_to_multiple(x, 8)
    assert xp.shape[2] % 8 == 0 and xp.shape[3] % 8 == 0
    np.testing.assert_array_equal(crop(xp, size), x)


def test_tensor_image_roundtrip():
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_image(to_tensor(img)), img)


def test_tiles_cover_every_pixel():
    tiles = tile_grid(1000, 700, 256, 32)
    cover = np.zeros((1000, 700), int)
    for t in tiles:
        cover[t.y0:t.y1, t.x0:t.x1] += 1
    assert cover.min() >= 1


def test_tiled_equals_untiled_for_pointwise_fn():
    x = np.random.default_rng(2).random((1, 3, 300, 500), dtype=np.float32)

    def up2(t):  # a pointwise op followed by x2 nearest upsampling
        return np.repeat(np.repeat(t**2, 2, axis=2), 2, axis=3)

    y = run_tiled(up2, x, tile=128, overlap=16, scale=2)
    np.testing.assert_allclose(y, up2(x), atol=1e-6)
