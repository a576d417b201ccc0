"""Fused batch normalisation: the same outputs, gradients and moving statistics as Keras's own layer, hand-checked,
and a saved model that is still stock Keras."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unet.model.fused import fuse_batch_norm
from keras_unet.model.unet import build_unet


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def pair(momentum=0.9, **kwargs):
    """A one-layer BatchNormalization model and an identical copy with the fused call."""
    inputs = keras.Input((None, None, 3))
    plain = keras.Model(inputs, keras.layers.BatchNormalization(momentum=momentum, **kwargs)(inputs))
    fused = keras.models.clone_model(plain)
    fused.set_weights(plain.get_weights())
    assert fuse_batch_norm(fused) == 1
    return plain, fused


def sample(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((4, 5, 6, 3)) * [1.0, 3.0, 10.0] + [0.0, -2.0, 5.0]).astype("float32")


def test_training_step_normalises_with_the_batch_and_moves_the_statistics_by_hand():
    plain, fused = pair(momentum=0.9)
    x = sample()
    out = np.asarray(fused(x, training=True))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased variance, as Keras keeps it
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3), atol=1e-5)
    layer = fused.layers[1]
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
def test_matches_keras_batch_norm_in_training_and_inference(policy):
    plain, fused = pair()
    for seed in range(3):  # three steps: the moving statistics accumulate the same way
        x = sample(seed)
        a, b = plain(x, training=True), fused(x, training=True)
        assert b.dtype == a.dtype
        np.testing.assert_allclose(np.asarray(b, "float32"), np.asarray(a, "float32"), atol=2e-2 if
                                   policy == "mixed_bfloat16" else 2e-6)
    for w_plain, w_fused in zip(plain.layers[1].weights, fused.layers[1].weights):
        np.testing.assert_allclose(np.asarray(w_fused), np.asarray(w_plain), rtol=1e-5, atol=1e-6)
    x = sample(9)
    np.testing.assert_allclose(np.asarray(fused(x, training=False), "float32"),
                               np.asarray(plain(x, training=False), "float32"), atol=2e-2 if
                               policy == "mixed_bfloat16" else 2e-6)


def test_gradients_match_keras_batch_norm():
    plain, fused = pair()
    for layer in (plain.layers[1], fused.layers[1]):
        layer.gamma.assign([0.5, 2.0, -1.0])
        layer.beta.assign([0.1, 0.0, 3.0])
    x = tf.constant(sample())
    weights = tf.constant(np.random.default_rng(1).random((4, 5, 6, 3)), "float32")
    grads = []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(weights * model(x, training=True))
        grads.append(tape.gradient(loss, [x, *model.trainable_weights]))
    for g_plain, g_fused in zip(*grads):
        np.testing.assert_allclose(np.asarray(g_fused), np.asarray(g_plain), rtol=1e-4, atol=1e-5)


def test_without_scale_and_centre_and_frozen_layers():
    plain, fused = pair(scale=False, center=False)
    x = sample()
    np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(plain(x, training=True)), atol=2e-6)
    fused.layers[1].trainable = False  # a frozen layer normalises with its moving statistics, as Keras does
    plain.layers[1].trainable = False
    np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(plain(x, training=True)), atol=2e-6)


def test_unet_layers_are_fused_once_and_saved_as_stock_keras(tmp_path):
    model = build_unet(2, depth=2, base_filters=4)
    assert fuse_batch_norm(model) == 2 * (2 * 2 + 1)  # two per block: 2 encoder, the bottleneck, 2 decoder
    assert fuse_batch_norm(model) == 10  # again: nothing wraps twice
    x = np.random.default_rng(0).random((2, 16, 16, 1), dtype="float32")
    before = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
    norms = [layer for layer in layers if "_bn" in layer["config"]["name"]]
    assert len(norms) == 10 and {(n["module"], n["class_name"]) for n in norms} == {
        ("keras.layers", "BatchNormalization")}
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-6)


def test_a_unet_without_batch_norm_has_nothing_to_fuse():
    assert fuse_batch_norm(build_unet(2, depth=2, base_filters=4, batch_norm=False)) == 0


def test_a_synchronized_layer_keeps_keras_call_for_the_global_batch_statistics():
    from keras_unet.model.fused import _fused_call

    layer = pair()[1].layers[1]
    calls = []
    fused = _fused_call(layer, lambda inputs, training=None, mask=None: calls.append(training) or "keras")
    layer.synchronized = True  # as train.distributed sets it while a step over several replicas is traced
    assert fused(sample(), training=True) == "keras" and calls == [True]
    layer.synchronized = False
    assert fused(sample(), training=True).shape == (4, 5, 6, 3) and calls == [True]
