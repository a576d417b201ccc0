"""numpy preprocessing (inference, edge) against the TensorFlow pipeline's: both must agree."""

import numpy as np
import pytest
import tensorflow as tf

from keras_unet.config import Config, NormalizationConfig
from keras_unet.data import pipeline
from keras_unet.imaging import preprocess


def radiograph(h, w, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    x = 90 + 120 * np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.2 * h * w)) + rng.normal(0, 12, (h, w))
    x = np.clip(x, 0, 255)
    if dtype == np.uint16:
        return (x * 257).astype(np.uint16)
    return x.astype(dtype)


def test_percentile_window_by_hand():
    image = np.arange(101, dtype=np.uint8).reshape(1, 101)
    lo, hi = preprocess.intensity_window(image, "percentile", 1.0, 99.0, grid=1000)
    assert (lo, hi) == (1.0, 99.0)
    assert preprocess.intensity_window(image, "minmax") == (0.0, 100.0)
    assert preprocess.intensity_window(image, "none") == (0.0, 255.0)


def test_normalize_maps_window_to_unit_range():
    image = np.arange(101, dtype=np.uint8).reshape(1, 101)
    x = preprocess.normalize(image, NormalizationConfig(low=1, high=99, sample_grid=1000))
    assert x[0, 0] == 0.0 and x[0, 100] == 1.0 and x[0, 50] == pytest.approx(49 / 98)


@pytest.mark.parametrize("method", ["percentile", "minmax", "none"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_normalisation_numpy_equals_tensorflow(method, dtype):
    image = radiograph(300, 220, dtype)
    norm = NormalizationConfig(method=method)
    expected = preprocess.normalize(image, norm)
    # the pipeline decodes every PNG on the 16-bit scale: 8-bit values arrive multiplied by 257
    scale = 257.0 if dtype == np.uint8 else 1.0
    got = pipeline.normalize(tf.constant(image[..., None].astype(np.float32) * scale), norm).numpy()[..., 0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(512, 512), (600, 400), (100, 150), (256, 256)])
def test_letterbox_numpy_equals_tensorflow(shape):
    x = preprocess.normalize(radiograph(*shape), NormalizationConfig())
    expected, box = preprocess.letterbox(x, 256)
    got = pipeline.letterbox(tf.constant(x[..., None]), 256).numpy()[..., 0]
    assert got.shape == expected.shape == (256, 256)
    diff = np.abs(got - expected)
    assert diff.mean() < 2e-3 and diff.max() < 0.05
    top, left = box.offset
    h, w = box.inner
    assert np.all(got[:top] == 0) and np.all(got[top + h:] == 0)
    assert np.all(got[:, :left] == 0) and np.all(got[:, left + w:] == 0)


def test_letterbox_by_hand():
    image = np.arange(1, 33, dtype=np.float32).reshape(4, 8)  # 4 rows, 8 columns
    # size 8: scale 1, no resize; 4 rows centred in 8 -> 2 rows of zeros above and below
    out, box = preprocess.letterbox(image, 8)
    assert out.shape == (8, 8) and out.dtype == np.float32
    assert (box.inner, box.offset) == ((4, 8), (2, 0))
    np.testing.assert_array_equal(out[2:6], image)
    assert not out[:2].any() and not out[6:].any()
    # shrinking by 4 is an area resize, the mean of each 4 x 4 block (a bilinear one would average only the middle
    # 2 x 2 of each block: told apart on uneven values); 8 x 16 at size 4: inner 2 x 4, offset (1, 0)
    uneven = np.random.default_rng(0).integers(0, 100, (8, 16)).astype(np.float32)
    out, box = preprocess.letterbox(uneven, 4)
    assert (box.inner, box.offset) == ((2, 4), (1, 0))
    np.testing.assert_allclose(out[1:3], uneven.reshape(2, 4, 4, 4).mean(axis=(1, 3)), atol=1e-4)
    assert not out[0].any() and not out[3].any()
    # a tall image pads left and right: 8 x 2 at size 4 -> inner 4 x 1, offset (0, 1)
    _, tall = preprocess.letterbox(image.T.copy()[:, :2], 4)
    assert (tall.inner, tall.offset) == ((4, 1), (0, 1))


def test_unletterbox_inverts_letterbox():
    mask = np.zeros((300, 200), np.float32)
    mask[100:200, 50:150] = 1.0
    boxed, box = preprocess.letterbox(mask, 128)
    back = preprocess.unletterbox(boxed, box)
    assert back.shape == (300, 200)
    assert np.mean((back > 0.5) == (mask > 0.5)) > 0.99


def test_unletterbox_many_channels():
    probs = np.random.default_rng(0).random((64, 64, 6)).astype(np.float32)
    back = preprocess.unletterbox(probs, preprocess.Letterbox(100, 80, 64))
    assert back.shape == (100, 80, 6)


def test_prepare_gives_network_input():
    config = Config(image_size=128)
    x, box = preprocess.prepare(radiograph(200, 300), config)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    assert box.inner == (85, 128) and box.offset == (21, 0)
