"""Run an exported .onnx model with onnxruntime (no TensorFlow): NHWC float32 batches in, probabilities out."""

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
    ONNX Runtime (its physical-core count). Operators run one after the other (one inter-op thread)."""

    def __init__(self, path, num_threads: int | None = None, providers=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "model file not found")
        ort = _runtime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads() if num_threads is None else int(num_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
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


