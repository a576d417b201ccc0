"""Write each export format from a float32 Keras model: SavedModel, TFLite (float32, float16 weights, int8), ONNX."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np

from keras_unet.config import Config
from keras_unet.errors import ExportError, KerasUnetError, first_line
from keras_unet.export.rewrite import STEM_LAYER, float16_exact_stem
from keras_unet.imaging.preprocess import prepare
from keras_unet.io import images

FILES = {"saved_model": "saved_model", "tflite": "model.tflite", "tflite_fp16": "model_fp16.tflite",
         "tflite_int8": "model_int8.tflite", "onnx": "model.onnx", "onnx_int8": "model_int8.onnx",
         "tflite_int16x8": "model_int16x8.tflite", "tflite_dynamic": "model_dynamic.tflite",
         "tflite_int8_mixed": "model_int8_mixed.tflite"}

# the TFLite quantisation schemes: full integer (int8 weights per channel and int8 activations, uint8 in and out:
# what integer-only accelerators need), int16 activations with int8 weights (float in and out), dynamic range (int8
# weights, float activations), and mixed: int8 but for the two ends in float32 (float in and out). The ends: the
# stem, whose filters have 9 weights each on a one-channel image (int8-rounding them alone moves the JSRT refine
# stage's masks to Dice 0.943 against float32; every other layer alone stays >= 0.995), and the head (the 1x1
# `logits` convolution and the sigmoid: an int8 logits step of about 0.1 near the 0.5 threshold flips edge pixels).
TFLITE_SCHEMES = {"tflite_int8": "full_int8", "tflite_int16x8": "int16x8", "tflite_dynamic": "dynamic",
                  "tflite_int8_mixed": "int8_float_ends"}
HEAD_LAYER = "logits"  # keras_unet.model.unet's output convolution


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
    """TFLite flatbuffer from a SavedModel: float32, float16 weights, or one of the TFLITE_SCHEMES."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    scheme = TFLITE_SCHEMES.get(mode)
    if mode == "tflite_fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif scheme == "full_int8":  # weights per channel (the converter's default), activations per tensor
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif scheme == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif scheme == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: dynamic range
    elif scheme == "int8_float_ends":
        return float_ends_model(converter, saved_model, calibration)
    return converter.convert()


def float_ends_model(converter, saved_model: Path, calibration) -> bytes:
    """Selective quantisation (the converter's quantisation debugger): every operator int8 but the stem and the
    head, named by the float32 model's tensors of the STEM_LAYER and HEAD_LAYER convolutions, and the sigmoid."""
    import tensorflow as tf

    from keras_unet.infer.runtimes import litert_interpreter

    interpreter = litert_interpreter()(model_content=tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())
    names = [t["name"] for t in interpreter.get_tensor_details()]
    ends = []
    for layer in (STEM_LAYER, HEAD_LAYER):
        tensors = [n for n in names if re.search(rf"/{layer}(_\d+)?/", n)]
        if not tensors:
            raise ExportError(f"tflite_int8_mixed: the model has no `{layer}` layer to keep in float")
        ends += tensors
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=ends, denylisted_ops=["LOGISTIC"])
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=calibration,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model()


def calibration_data(items, config: Config):
    """Representative-dataset callable: each calibration item as a [(1, S, S, 1)] list, made lazily; an item is an
    image file (prepared as for inference) or an already prepared (S, S, 1) input (a refine-stage crop)."""
    def generate():
        for item in items:
            x = item if isinstance(item, np.ndarray) else prepared(item, config)
            yield [np.asarray(x, np.float32)[None]]

    return generate


def quantize_onnx(source: Path, path: Path, calibration) -> None:
    """ONNX Runtime static quantisation (QDQ): int8 weights per channel, uint8 activations calibrated (min-max) on
    the representative inputs, weights at 7 bits (reduce_range) so that AVX2 and AVX-512 CPUs without VNNI do not
    saturate their u8 x s8 products; the stem and the head (the graph's first and last convolutions) stay float32,
    as in tflite_int8_mixed (parity on the JSRT refine stage: 0.895 with them quantised, 0.994 without)."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared_model = path.with_name(f".{path.stem}.pre.onnx")  # shapes inferred and the graph optimised first
    quant_pre_process(str(source), str(prepared_model), skip_symbolic_shape=True)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration())

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {INPUT_NAME: item[0]}

    try:
        convolutions = [n.name for n in onnx.load(str(prepared_model)).graph.node if n.op_type == "Conv"]
        q.quantize_static(str(prepared_model), str(path), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          reduce_range=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax,
                          nodes_to_exclude=[convolutions[0], convolutions[-1]] if convolutions else [])
    finally:
        prepared_model.unlink(missing_ok=True)


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


def write_onnx(model, path: Path, size: int) -> None:
    """The float32 ONNX model, checked, at path."""
    import onnx

    proto = convert_onnx(model, size)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_artifact(fmt: str, model, folder: Path, saved_model: Path, config: Config, calibration) -> Path:
    """Write one artefact into folder and return its path."""
    path = folder / FILES[fmt]
    try:
        if fmt == "saved_model":
            pass  # written first, as the TFLite converters read it
        elif fmt == "tflite_fp16":  # from its own SavedModel, of the network with a float16-exact stem
            exact = folder / ".fp16_saved_model"
            try:
                write_saved_model(float16_exact_stem(model), exact, config.image_size)
                path.write_bytes(convert_tflite(exact, fmt))
            finally:
                shutil.rmtree(exact, ignore_errors=True)
        elif fmt.startswith("tflite"):
            data = convert_tflite(saved_model, fmt, calibration_data(calibration, config))
            path.write_bytes(data)
        elif fmt == "onnx_int8":
            source = folder / FILES["onnx"]
            if not source.is_file():  # quantised from the float ONNX model, written here first when not chosen
                source = folder / ".float.onnx"
                write_onnx(model, source, config.image_size)
            quantize_onnx(source, path, calibration_data(calibration, config))
            if source.name.startswith("."):
                source.unlink()
        else:
            write_onnx(model, path, config.image_size)
    except KerasUnetError:
        raise
    except Exception as exc:  # converters raise many types
        raise ExportError(f"{fmt}: conversion failed ({first_line(exc)})") from exc
    return path
