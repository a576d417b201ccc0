"""Model files written from memory: they load as Keras writes them, and a full disk fails cleanly (one DiskFullError
with the exact size, the earlier file kept), never inside HDF5's own writer."""

import errno
import os

import keras
import numpy as np
import pytest

from keras_unet.io.files import DiskFullError
from keras_unet.model import saving
from keras_unet.model.unet import build_unet


def _network():
    model = build_unet(2, depth=2, base_filters=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def _trained():
    model = _network()
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32).repeat(2, axis=-1)
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    return model, x, y


def test_model_and_weights_files_round_trip(tmp_path):
    model, x, y = _trained()
    saving.save_for_inference(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    saving.save_weights_file(model, tmp_path / "backup.weights.h5")
    fresh = _network()
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "backup.weights.h5")
    for a, b in zip(model.weights + model.optimizer.variables, fresh.weights + fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(np.asarray(fresh.optimizer.iterations)) == 2  # the optimizer's state came back, not only weights


def test_a_full_disk_keeps_the_earlier_weights_and_names_the_size(tmp_path, monkeypatch):
    model, x, y = _trained()
    path = tmp_path / "backup.weights.h5"
    saving.save_weights_file(model, path)
    earlier, size = path.read_bytes(), path.stat().st_size
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)  # new weights, same shapes
    real = os.replace

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError) as error:
        saving.save_weights_file(model, path)
    monkeypatch.setattr(os, "replace", real)
    assert error.value.needed == size  # the in-memory file's exact size (same shapes, same layout)
    assert path.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.weights.h5"]


def test_without_in_memory_saving_a_write_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    model, _, _ = _trained()
    monkeypatch.setattr(saving, "_MEMORY_WEIGHTS", False)  # a Keras whose private saving API moved
    monkeypatch.setattr(saving, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFullError) as error:
        saving.save_weights_file(model, tmp_path / "backup.weights.h5")
    assert error.value.needed > saving._variable_bytes(model) > 0 and not list(tmp_path.iterdir())
    monkeypatch.setattr(saving, "free_bytes", lambda folder: None)  # unknown free space: the write goes ahead
    saving.save_weights_file(model, tmp_path / "backup.weights.h5")
    assert (tmp_path / "backup.weights.h5").stat().st_size > saving._variable_bytes(model)


def test_float32_model_converts_a_mixed_model_of_another_layout():
    keras.config.set_dtype_policy("mixed_float16")
    try:  # a network that is not the U-Net its config.json would build
        inputs = keras.Input((None, None, 1))
        a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
        merged = keras.layers.Concatenate(name="concat")([a, inputs])
        out = keras.layers.Activation("sigmoid", dtype="float32")(keras.layers.Conv2D(2, 1, name="logits")(merged))
        mixed = keras.Model(inputs, out)
    finally:
        keras.config.set_dtype_policy("float32")
    rebuilt = saving.float32_model(mixed)
    assert saving.is_mixed(mixed) and not saving.is_mixed(rebuilt)
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in mixed.layers]
    x = np.random.default_rng(0).random((1, 8, 8, 1), "float32")
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), mixed.predict(x, verbose=0), atol=2e-3)
