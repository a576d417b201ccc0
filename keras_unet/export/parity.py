"""Run each written artefact on the parity images and compare it with the Keras model: Dice per class, the largest
probability difference, latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from keras_unet.config import Config
from keras_unet.errors import ExportError
from keras_unet.export.convert import INPUT_NAME, ONNX_OPSET, prepared
from keras_unet.imaging.metrics import dice
from keras_unet.infer.runtimes import OnnxModel, TFLiteModel, saved_model_network

PARITY_THRESHOLD = 0.5


LATENCY_RUNS = 5


CHUNK = 8  # images per network call while measuring parity


def load_batch(paths, config: Config) -> np.ndarray:
    """Image files as a prepared (N, S, S, 1) float32 batch."""
    return np.stack([prepared(p, config) for p in paths])


def runner(fmt: str, path: Path):
    """(predict, tensor details) for a written artefact."""
    if fmt == "saved_model":
        return saved_model_network(path), {"signature": "serve (also serving_default)", "input": INPUT_NAME,
                                           "output": "output_0"}
    if fmt.startswith("onnx"):
        model = OnnxModel(path)
        return model.predict, {"input": model.input_name, "output": model.output_name, "opset": ONNX_OPSET,
                               "dynamic_axes": {"input": [0], "output": [0]}}
    model = TFLiteModel(path)
    return model.predict, {"signature": "serving_default", "input": _tensor(model.input),
                           "output": _tensor(model.output)}


def _tensor(detail: dict) -> dict:
    dtype = np.dtype(detail["dtype"]).name
    info = {"name": detail["name"], "dtype": dtype, "shape": [int(v) for v in detail["shape_signature"]]}
    if dtype in ("uint8", "int8"):
        scale, zero_point = detail["quantization"]
        info.update(scale=float(scale), zero_point=int(zero_point),
                    real_value="(q - zero_point) * scale")
    return info


def predict_all(predict, batch: np.ndarray) -> np.ndarray:
    """Probabilities for a whole batch, CHUNK images per call."""
    return np.concatenate([np.asarray(predict(batch[i:i + CHUNK]), dtype=np.float32)
                           for i in range(0, len(batch), CHUNK)])


def latency_ms(predict, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds of one single-image call, after a warm-up call."""
    x = image[None]
    predict(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def compare(reference: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Max absolute difference and per-class Dice of the masks thresholded at 0.5 (worst class as `dice`)."""
    if probs.shape != reference.shape:
        raise ExportError(f"the artefact returned shape {probs.shape}, the Keras model {reference.shape}")
    ref, out = reference > PARITY_THRESHOLD, probs > PARITY_THRESHOLD
    width = ref.shape[-2]  # the images stacked as rows of one 2-D mask: Dice pooled over the batch
    per_class = {name: dice(ref[..., c].reshape(-1, width), out[..., c].reshape(-1, width))
                 for c, name in enumerate(classes)}
    return {"dice": min(per_class.values()), "dice_per_class": per_class,
            "max_abs_diff": float(np.max(np.abs(probs - reference))),
            "mean_abs_diff": float(np.mean(np.abs(probs - reference)))}
