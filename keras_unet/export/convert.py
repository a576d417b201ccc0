"""Write each export format from a float32 Keras model: SavedModel, TFLite (float32, float16 weights, int8), ONNX."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from keras_unet.config import Config
from keras_unet.errors import ExportError, KerasUnetError, first_line
from keras_unet.imaging.preprocess import prepare
from keras_unet.io import images

FILES = {"saved_model": "saved_model", "tflite": "model.tflite", "tflite_fp16": "model_fp16.tflite",
         "tflite_int8": "model_int8.tflite", "onnx": "model.onnx"}


INPUT_NAME = "image"


ONNX_OUTPUT = "probabilities"


ONNX_OPSET = 17


def prepared(path, config: Config) -> np.ndarray:
    """One image file as a (S, S, 1) float32 network input (keras_unet.imaging.preprocess.prepare)."""
    return prepare(images.read_image(path), config)[0].astype(np.float32)


def write_saved_model(model, path: Path, size: int) -> None:
    """A SavedModel whose `serve` endpoint takes `image`: float32 (None, S, S, 1)."""
    import keras

    spec = keras.InputSpec(shape=(None, size, size, 1), dtype="float32", name=INPUT_NAME)
    try:
        model.export(str(path), format="tf_saved_model", input_signature=[spec], verbose=False)
    except Exception as exc:  # TensorFlow raises many types
        raise ExportError(f"saved_model: export failed ({first_line(exc)})") from exc


def convert_tflite(saved_model: Path, mode: str, calibration=None) -> bytes:
    """TFLite flatbuffer from a SavedModel: float32, float16 weights, or full-integer int8 (uint8 in and out)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode == "tflite_fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "tflite_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def calibration_data(paths, config: Config):
    """Representative-dataset callable: each calibration image as a prepared [(1, S, S, 1)] list, read lazily."""
    def generate():
        for path in paths:
            yield [prepared(path, config)[None]]

    return generate


def convert_onnx(model, size: int, opset: int = ONNX_OPSET):
    """ONNX ModelProto via tf2onnx: input `image` (batch, S, S, 1), output `probabilities`, dynamic batch."""
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise ExportError("onnx: tf2onnx is not installed (pip install tf2onnx onnx onnxruntime)") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = [tf.TensorSpec((None, size, size, 1), tf.float32, name=INPUT_NAME)]
    forward = tf.function(lambda image: model(image, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
    return name_onnx_io(proto, ONNX_OUTPUT, "batch")


def name_onnx_io(proto, output_name: str, batch_name: str):
    """Rename the ONNX graph's output and its inputs' and outputs' first (batch) dimension."""
    graph = proto.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [output_name if name == old else name for name in node.output]
        node.input[:] = [output_name if name == old else name for name in node.input]
    graph.output[0].name = output_name
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = batch_name
    return proto


def write_artifact(fmt: str, model, folder: Path, saved_model: Path, config: Config, calibration) -> Path:
    """Write one artefact into folder and return its path."""
    path = folder / FILES[fmt]
    try:
        if fmt == "saved_model":
            pass  # written first, as the TFLite converters read it
        elif fmt.startswith("tflite"):
            data = convert_tflite(saved_model, fmt, calibration_data(calibration, config))
            path.write_bytes(data)
        else:
            import onnx

            proto = convert_onnx(model, config.image_size)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(path))
    except KerasUnetError:
        raise
    except Exception as exc:  # converters raise many types
        raise ExportError(f"{fmt}: conversion failed ({first_line(exc)})") from exc
    return path
