"""The networks behind a Predictor: each maps float32 (N, S, S, 1) batches in [0, 1] to float32 probabilities
(N, S, S, C). LiteRT (`TFLiteModel`) and ONNX Runtime (`OnnxModel`) need no TensorFlow; the Keras and SavedModel
networks import it when they are made."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_unet.errors import DataError, KerasUnetError, first_line


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise KerasUnetError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def default_threads() -> int:
    """Threads for the runtime: the CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OnnxModel:
    """An .onnx network: float32 (N, S, S, 1) batches in [0, 1] to float32 probabilities (N, S, S, C).

    num_threads: intra-op threads; None uses every core this process may run on, 0 leaves the choice to
    ONNX Runtime (its physical-core count). The fastest settings for a U-Net on CPU cores: every graph
    optimisation (fusions and the NCHWc layout of the CPU kernels), operators one after the other (one inter-op
    thread: a U-Net is a chain). A batch runs in one call. Denormals are not flushed to zero: ONNX Runtime's
    set_denormal_as_zero changes the floating-point state of the whole process (numpy and the caller's code too)."""

    def __init__(self, path, num_threads: int | None = None, providers=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "model file not found")
        ort = _runtime()
        options = ort.SessionOptions()
        self.num_threads = default_threads() if num_threads is None else int(num_threads)
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = False  # the arena kept ~50 MB more resident on the 1024 px chain, no faster
        options.enable_mem_pattern = False
        # a chain holds two sessions, each with its own pool: threads spinning after a call took the cores from the
        # other session and the numpy steps between calls (2 cores, JSRT chain: 184 ms a file spinning, 147 not)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for broken files
            raise DataError(self.path, f"cannot load the ONNX model ({first_line(exc)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def predict(self, batch) -> np.ndarray:
        """Probabilities for a float32 batch (N, S, S, 1) in [0, 1]."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"{self.path.name}: expected a batch of shape (N, S, S, 1), got {x.shape}")
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)


_QUANTISED = (np.uint8, np.int8, np.int16)


def litert_interpreter():
    """LiteRT's Interpreter class (KerasUnetError naming the package when it is not installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise KerasUnetError("LiteRT is not installed: pip install ai-edge-litert") from None
    return Interpreter


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float values to a quantised integer tensor: round(x / scale) + zero_point, clipped to the dtype."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """A quantised integer tensor back to float32: (q - zero_point) * scale."""
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class TFLiteModel:
    """A .tflite network: float32 (N, S, S, 1) batches in [0, 1] to float32 probabilities (N, S, S, C).

    num_threads: LiteRT threads (its XNNPACK delegate, on by default, runs the float and int8 operators); None uses
    every core this process may run on. batch: run a batch of N images as one call of an interpreter resized to N
    (the TTA pair as one call), else one image at a time."""

    def __init__(self, path, num_threads: int | None = None, batch: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "model file not found")
        self.num_threads = int(num_threads) if num_threads else default_threads()
        self.batch = batch
        try:
            self.interpreter = litert_interpreter()(model_path=str(self.path), num_threads=self.num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DataError(self.path, f"cannot load the TFLite model ({first_line(exc)})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch_size = int(self.input["shape"][0])
        for detail in (self.input, self.output):
            if detail["dtype"] not in (np.float32, *_QUANTISED):
                raise DataError(self.path, f"unsupported tensor type {np.dtype(detail['dtype']).name}")

    @property
    def input_shape(self) -> tuple:
        """(S, S, channels) of one input image."""
        return tuple(int(v) for v in self.input["shape"][1:])

    @property
    def quantized(self) -> bool:
        """Whether the model takes integer input."""
        return self.input["dtype"] in _QUANTISED

    def predict(self, batch) -> np.ndarray:
        """Probabilities for a float32 batch (N, S, S, 1) in [0, 1]."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.path.name}: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}),"
                             f" got {x.shape}")
        if not len(x):
            return np.zeros((0, *self.output["shape"][1:]), np.float32)
        if self.batch:
            return self._run(x)
        return np.concatenate([self._run(image[None]) for image in x])

    def _run(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch_size:  # resized once per batch size change (the TTA pair stays at 2)
            self.interpreter.resize_tensor_input(self.input["index"], [len(x), *self.input_shape])
            self.interpreter.allocate_tensors()
            self._batch_size = len(x)
        self.interpreter.set_tensor(self.input["index"], self._to_input(x))
        self.interpreter.invoke()
        return self._from_output(self.interpreter.get_tensor(self.output["index"]))

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return x
        scale, zero_point = self.input["quantization"]
        return quantize(x, scale, zero_point, self.input["dtype"])

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        if self.output["dtype"] not in _QUANTISED:
            return np.array(y, dtype=np.float32)
        scale, zero_point = self.output["quantization"]
        return dequantize(y, scale, zero_point)


def keras_network(model):
    """Batch -> float32 probabilities through a traced call of a Keras model."""
    import tensorflow as tf

    size = model.inputs[0].shape[1]
    signature = [tf.TensorSpec([None, size, size, 1], tf.float32)]
    forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), input_signature=signature)
    return lambda batch: forward(tf.constant(batch, dtype=tf.float32)).numpy()


def saved_model_network(path):
    """The `serve` endpoint of a SavedModel (as keras Model.export writes it) on float32 batches."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise DataError(path, f"cannot load the SavedModel ({first_line(exc)})") from None
    if hasattr(loaded, "serve"):
        serve = loaded.serve
    elif "serving_default" in getattr(loaded, "signatures", {}):
        serve = loaded.signatures["serving_default"]
    else:
        raise DataError(path, "SavedModel has no `serve` endpoint nor a serving_default signature")

    def network(batch, _keep=loaded):  # the default argument keeps the loaded variables alive
        out = serve(tf.constant(batch, dtype=tf.float32))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return np.asarray(out, dtype=np.float32)

    return network
