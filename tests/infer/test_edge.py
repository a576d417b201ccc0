"""The TensorFlow-free edge runner: no TensorFlow import, the same masks as the Keras path, quantised I/O, CLI."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO
from export_fixtures import CLASSES, SIZE, exported, tiny_run  # noqa: F401 (session fixtures, shared with export tests)
from keras_unet.errors import ConfigError


def test_import_leaves_tensorflow_out():
    code = ("import sys, keras_unet.edge, keras_unet.cli.edge, keras_unet.infer.edge, keras_unet.infer.runtimes; "
            "loaded = [m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules]; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_quantize_round_trip():
    from keras_unet.infer.runtimes import dequantize, quantize

    x = np.linspace(0, 1, 256, dtype=np.float32)
    q = quantize(x, 1 / 255, 0, np.uint8)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255
    np.testing.assert_allclose(dequantize(q, 1 / 255, 0), x, atol=0.5 / 255 + 1e-7)
    assert quantize(np.array([2.0, -1.0]), 1 / 256, -128, np.int8).tolist() == [127, -128]


def val_images(tiny_run) -> list[np.ndarray]:
    from keras_unet.config import load_config

    data = Path(load_config(tiny_run / "config.json").data)
    return [cv2.imread(str(data / "images" / f"s{i}.png"), cv2.IMREAD_UNCHANGED) for i in (12, 13, 14, 15)]


def keras_segment(model, config, image: np.ndarray, tta: bool):
    """The Keras path: numpy preprocessing, model.predict, unletterbox, optional flip TTA, clean_masks."""
    from keras_unet.classes import flip_permutation
    from keras_unet.imaging.postprocess import clean_masks
    from keras_unet.imaging.preprocess import prepare, unletterbox

    def probs(view):
        x, box = prepare(view, config)
        return unletterbox(model.predict(x[None], verbose=0)[0], box)

    p = probs(image)
    if tta:
        p = (p + probs(image[:, ::-1])[:, ::-1][..., flip_permutation(config.classes)]) * np.float32(0.5)
    return p, clean_masks(p, config.classes, config.postprocess)


@pytest.mark.parametrize("tta", [False, True])
def test_edge_masks_equal_the_keras_path(exported, tiny_run, tta):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import load_run
    from keras_unet.infer.edge import EdgeSegmenter

    out, _ = exported
    model, config = load_run(tiny_run / "model.keras")
    segmenter = EdgeSegmenter(out / "model.tflite")
    assert segmenter.config.postprocess.tta is False  # the run's setting; tta=True below switches flipping on
    settings = dataclasses.replace(segmenter.config.postprocess, tta=tta)
    flipping_changed = []
    for image in val_images(tiny_run):
        probs, masks = segmenter.segment(image, settings)
        want_probs, want_masks = keras_segment(model, config, image, tta)
        assert probs.shape == image.shape + (len(CLASSES),) and masks.dtype == np.uint8
        np.testing.assert_allclose(probs, want_probs, atol=1e-4)
        np.testing.assert_array_equal(masks, want_masks)
        assert masks.any(axis=(0, 1)).all()  # every class found: the comparison is not between empty masks
        flipping_changed.append(not np.allclose(probs, keras_segment(model, config, image, False)[0], atol=1e-3))
    assert all(flipping_changed) == tta  # with tta the flipped pass really went in; without, it did not


def test_int8_model_takes_and_returns_uint8(exported, tiny_run):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.imaging.metrics import dice
    from keras_unet.infer.edge import EdgeSegmenter
    from keras_unet.infer.runtimes import TFLiteModel

    out, _ = exported
    model = TFLiteModel(out / "model_int8.tflite", num_threads=1)
    assert model.quantized and model.input["dtype"] == np.uint8 and model.output["dtype"] == np.uint8
    probs = model.predict(np.random.default_rng(0).random((2, SIZE, SIZE, 1), dtype=np.float32))
    assert probs.shape == (2, SIZE, SIZE, len(CLASSES)) and probs.dtype == np.float32
    assert probs.min() >= 0 and probs.max() <= 1
    with pytest.raises(ValueError, match="expected a batch"):
        model.predict(np.zeros((1, SIZE, SIZE), np.float32))
    int8, float32 = EdgeSegmenter(out / "model_int8.tflite"), EdgeSegmenter(out / "model.tflite")
    for image in val_images(tiny_run):
        a, b = int8.segment(image)[1], float32.segment(image)[1]
        assert all(dice(a[..., c] > 0, b[..., c] > 0) > 0.95 for c in range(len(CLASSES)))


def test_metadata_must_sit_beside_the_model(exported, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.infer.edge import EdgeSegmenter

    out, _ = exported
    shutil.copy(out / "model.tflite", tmp_path / "model.tflite")
    with pytest.raises(ConfigError, match="metadata.json"):
        EdgeSegmenter(tmp_path / "model.tflite")


def test_command_line_writes_masks(exported, tiny_run, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.config import load_config
    from keras_unet.infer.edge import EdgeSegmenter

    out, _ = exported
    data = Path(load_config(tiny_run / "config.json").data) / "images"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = subprocess.run(
        [sys.executable, "-m", "keras_unet.edge", str(out / "model_int8.tflite"), str(data / "s12.png"),
         str(data / "s13.png"), str(broken), "--out", str(tmp_path / "masks"), "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "skipped" in result.stdout and "broken.png" in result.stdout
    expected = EdgeSegmenter(out / "model_int8.tflite").segment(cv2.imread(str(data / "s12.png"), 0))[1]
    for c, name in enumerate(CLASSES):
        written = cv2.imread(str(tmp_path / "masks" / name / "s12.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(written, expected[..., c] * 255)
        assert (tmp_path / "masks" / name / "s13.png").is_file()


def test_threads_reach_the_runtimes(exported):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    from keras_unet.cli.edge import parse_args
    from keras_unet.infer.edge import EdgeSegmenter
    from keras_unet.infer.runtimes import default_threads

    out, _ = exported
    assert parse_args(["--model", "m.tflite", "--input", "x.png", "--out", "o", "--threads", "1"]).threads == 1
    with pytest.raises(SystemExit):
        parse_args(["--model", "m.tflite", "--input", "x.png", "--out", "o", "--threads", "0"])
    for name in ("model_int8.tflite", "model.onnx"):
        one, every = EdgeSegmenter(out / name, num_threads=1), EdgeSegmenter(out / name)
        assert one.network.__self__.num_threads == 1 and every.threads == default_threads()
        assert every.network.__self__.num_threads == default_threads() and not one.refined
    session = EdgeSegmenter(out / "model.onnx", num_threads=1).network.__self__.session
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().graph_optimization_level.name == "ORT_ENABLE_ALL"
    # a chain's two sessions must not spin for the cores after each call (benchmarks/README.md, edge)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    batch = np.zeros((2, SIZE, SIZE, 1), np.float32)  # the TTA pair: one call of a LiteRT interpreter resized to 2
    model = EdgeSegmenter(out / "model.tflite", num_threads=1).network.__self__
    assert model.predict(batch).shape == (2, SIZE, SIZE, len(CLASSES)) and model.input["shape"][0] == 1
    assert tuple(model.interpreter.get_input_details()[0]["shape"]) == (2, SIZE, SIZE, 1)
    np.testing.assert_allclose(model.predict(batch[:1]), model.predict(batch)[:1], atol=1e-6)  # and back to 1
