"""Every U-Net variant through the same checks: forward shape and range, a train step, save/load."""

import numpy as np
import pytest
import keras

from keras_unet.config import Config, merge
from keras_unet.model.losses import BceDiceLoss, segmentation_metrics
from keras_unet.model.unet import build_unet, model_from_config

VARIANTS = {
    "default": dict(depth=2, base_filters=4),
    "bilinear": dict(depth=2, base_filters=4, upsampling="bilinear"),
    "no_batch_norm": dict(depth=2, base_filters=4, batch_norm=False),
    "dropout": dict(depth=2, base_filters=4, dropout=0.3),
    "deep": dict(depth=4, base_filters=2),
    "one_class": dict(depth=1, base_filters=4, num_classes=1),
}


def make(variant):
    kwargs = dict(VARIANTS[variant])
    return build_unet(kwargs.pop("num_classes", 3), **kwargs)


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return request.param


def test_forward_shape_and_range(variant):
    model = make(variant)
    x = np.random.default_rng(0).random((2, 32, 48, 1), dtype="float32")
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 32, 48, model.output_shape[-1])
    assert y.dtype == np.float32 and np.all((y >= 0) & (y <= 1))


def test_fully_convolutional(variant):
    model = make(variant)
    assert model.input_shape == (None, None, None, 1)
    assert model.predict(np.zeros((1, 64, 64, 1), "float32"), verbose=0).shape[1:3] == (64, 64)


def test_train_step_reduces_loss(variant):
    keras.utils.set_random_seed(0)
    model = make(variant)
    n = model.output_shape[-1]
    x = np.random.default_rng(1).random((4, 32, 32, 1), dtype="float32")
    y = np.zeros((4, 32, 32, n), "float32")
    y[:, 8:24, 8:24, :] = 1.0
    model.compile(keras.optimizers.Adam(1e-2), loss=BceDiceLoss())
    first = model.train_on_batch(x, y)
    for _ in range(15):
        last = model.train_on_batch(x, y)
    assert np.isfinite(last) and last < first


def test_save_load_round_trip(variant, tmp_path):
    model = make(variant)
    n = model.output_shape[-1]
    model.compile("adam", loss=BceDiceLoss(), metrics=segmentation_metrics([f"c{i}" for i in range(n)]))
    x = np.random.default_rng(2).random((1, 32, 32, 1), dtype="float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects: importing model.losses registered them
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.loss, BceDiceLoss)


def test_mixed_precision_keeps_float32_outputs():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet(2, depth=2, base_filters=4)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_model_from_config_uses_settings():
    config = merge(Config(classes=["a", "b"]), {"model.depth": 3, "model.base_filters": 8})
    model = model_from_config(config)
    assert model.output_shape[-1] == 2
    assert model.get_layer("bottleneck_conv1").filters == 64


def test_rejects_unknown_upsampling():
    with pytest.raises(ValueError, match="upsampling"):
        build_unet(1, upsampling="nearest")
