"""float16_exact_stem: the same function, with a stem whose two kernels survive float16 rounding."""

import keras
import numpy as np
import pytest

from keras_unet.errors import ExportError
from keras_unet.export.rewrite import float16_exact_stem
from keras_unet.model.unet import build_unet


@pytest.fixture(scope="module")
def network():
    model = build_unet(2, depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    stem = model.get_layer("enc0_conv1")
    # edge-like filters: nine weights that nearly cancel, on a bright image (the case float16 rounding breaks)
    kernel = rng.normal(0, 1, stem.kernel.shape)
    kernel -= kernel.mean(axis=(0, 1, 2), keepdims=True)
    stem.kernel.assign((kernel * 3.1 + 1e-3).astype(np.float32))
    norm = model.get_layer("enc0_bn1")
    norm.moving_mean.assign(rng.normal(0, 0.01, norm.moving_mean.shape).astype(np.float32))
    norm.moving_variance.assign(rng.uniform(1e-4, 1e-3, norm.moving_variance.shape).astype(np.float32))
    x = (0.9 + 0.05 * rng.random((2, 32, 32, 1))).astype(np.float32)
    return model, x


def test_the_rewritten_network_computes_the_same_function(network):
    model, x = network
    exact = float16_exact_stem(model)
    np.testing.assert_allclose(exact.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-5)
    assert "enc0_bn1" not in [layer.name for layer in exact.layers]  # folded into the pair
    high, low = (np.asarray(exact.get_layer(f"enc0_conv1_{n}").kernel) for n in ("hi", "lo"))
    for kernel in (high, low):
        np.testing.assert_array_equal(kernel.astype(np.float16).astype(np.float32), kernel)
    assert np.abs(low).max() > 0  # the rest is not all zero: the split carries something


def test_the_pair_keeps_the_folded_stem_to_float32_precision_where_float16_rounding_does_not(network):
    model, _ = network
    conv, norm = model.get_layer("enc0_conv1"), model.get_layer("enc0_bn1")
    scale = np.asarray(norm.gamma) / np.sqrt(np.asarray(norm.moving_variance) + norm.epsilon)
    folded = np.asarray(conv.kernel, np.float64) * scale  # what the converter stores, once rounded to float16
    exact = float16_exact_stem(model)
    pair = sum(np.asarray(exact.get_layer(f"enc0_conv1_{n}").kernel, np.float64) for n in ("hi", "lo"))
    rounded = folded.astype(np.float16).astype(np.float64)
    assert np.abs(pair - folded).max() < np.abs(rounded - folded).max() / 100


def test_a_network_without_the_stem_layer_is_refused():
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, name="other")(inputs))
    with pytest.raises(ExportError, match="no `enc0_conv1` layer"):
        float16_exact_stem(model)
