"""Run an exported .tflite model with LiteRT, numpy and OpenCV only (no TensorFlow), for phones and small boards.

`TFLiteModel` runs the network on prepared batches (float, or uint8/int8 quantised through the tensors' scale
and zero point). `EdgeSegmenter` adds the run settings from `metadata.json` beside the model and segments raw
images with the same `keras_unet.segmenter.Predictor` core as the library: `preprocess.prepare`, the network, `unletterbox`,
optional flip TTA (left_*/right_* channels swapped), then `postprocess.clean_masks`.

    python -m keras_unet.edge export/model_int8.tflite xray.png --out masks/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from keras_unet.config import Config, config_from_dict
from keras_unet.errors import ConfigError, DataError, KerasUnetError, first_line
from keras_unet.postprocess import clean_masks
from keras_unet.segmenter import Predictor

METADATA_FILE = "metadata.json"
_QUANTISED = (np.uint8, np.int8)


def default_threads() -> int:
    """Threads for the runtimes: the CPU cores this process may use (LiteRT alone would take 1)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _interpreter_class():
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

    num_threads: LiteRT (XNNPACK) threads; None uses every core this process may run on."""

    def __init__(self, path, num_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "model file not found")
        self.num_threads = int(num_threads) if num_threads else default_threads()
        try:
            self.interpreter = _interpreter_class()(model_path=str(self.path), num_threads=self.num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DataError(self.path, f"cannot load the TFLite model ({first_line(exc)})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
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
        """Probabilities for a float32 batch (N, S, S, 1) in [0, 1], one image at a time."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.path.name}: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}),"
                             f" got {x.shape}")
        outputs = [self._run(image[None]) for image in x]
        return np.stack(outputs) if outputs else np.zeros((0, *self.output["shape"][1:]), np.float32)

    def _run(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], self._to_input(image))
        self.interpreter.invoke()
        return self._from_output(self.interpreter.get_tensor(self.output["index"])[0])

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


def read_metadata(model_path) -> tuple[dict, Config]:
    """metadata.json beside an exported model, and the run Config it holds."""
    path = Path(model_path).parent / METADATA_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; keep the export's metadata.json beside the model") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read metadata ({first_line(exc)})") from None
    if not isinstance(values, dict) or not isinstance(values.get("config"), dict):
        raise ConfigError(f"{path}: metadata has no \"config\" mapping of run settings")
    config = config_from_dict(values["config"], f"{path}: config").validate()
    if not config.classes:
        raise ConfigError(f"{path}: the config lists no classes")
    return values, config


class EdgeSegmenter(Predictor):
    """Raw grayscale image in, (probabilities, cleaned uint8 masks) at the original size out, with LiteRT."""

    def __init__(self, model_path, num_threads: int | None = None):
        self.metadata, config = read_metadata(model_path)
        self.model = TFLiteModel(model_path, num_threads)
        super().__init__(self.model.predict, config, model_path)
        expected = (config.image_size, config.image_size, 1)
        if self.model.input_shape != expected:
            raise ConfigError(f"{model_path}: input {self.model.input_shape} does not match the config's {expected}")

    def segment(self, image, tta: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, uint8 0/1 masks), both (H, W, C), cleaned with the run's post-processing."""
        probs = self.predict_probs(image, tta)
        return probs, clean_masks(probs, self.classes, self.config.postprocess)


def segment_files(segmenter: EdgeSegmenter, paths, out, tta: bool | None = None, log=print) -> int:
    """Write out/<class>/<stem>.png (0/255) for each image; returns how many failed (reported, skipped)."""
    from keras_unet import images

    out = Path(out)
    failed = 0
    for path in map(Path, paths):
        try:
            _, masks = segmenter.segment(images.read_image(path), tta)
            for c, name in enumerate(segmenter.classes):
                images.write_png(out / name / f"{path.stem}.png", masks[..., c] * np.uint8(255))
        except KerasUnetError as exc:
            failed += 1
            log(f"skipped: {exc}")
    log(f"{len(paths) - failed} image(s) segmented into {out}" + (f"; {failed} skipped" if failed else ""))
    return failed


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m keras_unet.edge",
                                description="Segment X-ray images with an exported .tflite model (LiteRT, no TensorFlow).")
    p.add_argument("model", help=".tflite file with the export's metadata.json beside it")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder: OUT/<class>/<image stem>.png (0/255)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for LiteRT (default: all cores)")
    p.add_argument("--no-tta", action="store_true", help="skip the horizontal-flip test-time augmentation")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    segmenter = EdgeSegmenter(args.model, args.threads)
    return 1 if segment_files(segmenter, args.images, args.out, False if args.no_tta else None) else 0


if __name__ == "__main__":
    from keras_unet.cli import run_main

    sys.exit(run_main(main))
