"""Run an exported .tflite model with LiteRT, numpy and OpenCV only (no TensorFlow), for phones and small boards.

`EdgeSegmenter` is a `keras_unet.infer.predictor.Predictor` around a `runtimes.TFLiteModel`, with the run settings
from the `metadata.json` beside the model: `imaging.preprocess.prepare`, the network, `unletterbox`, optional flip
TTA (left_*/right_* channels swapped), then `imaging.postprocess.clean_masks`, as for every other runtime.

    python -m keras_unet.edge export/model_int8.tflite xray.png --out masks/
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_unet.errors import ConfigError, KerasUnetError
from keras_unet.infer.load import read_metadata
from keras_unet.infer.predictor import Predictor, postprocess_settings
from keras_unet.infer.runtimes import TFLiteModel
from keras_unet.io import images



class EdgeSegmenter(Predictor):
    """Raw grayscale image in, (probabilities, cleaned uint8 masks) at the original size out, with LiteRT."""

    def __init__(self, model_path, num_threads: int | None = None):
        self.metadata, config = read_metadata(model_path)
        self.model = TFLiteModel(model_path, num_threads)
        super().__init__(self.model.predict, config, model_path)
        expected = (config.image_size, config.image_size, 1)
        if self.model.input_shape != expected:
            raise ConfigError(f"{model_path}: input {self.model.input_shape} does not match the config's {expected}")


def segment_files(segmenter: EdgeSegmenter, paths, out, tta: bool | None = None, log=print) -> int:
    """Write out/<class>/<stem>.png (0/255) for each image; returns how many failed (reported, skipped)."""
    out = Path(out)
    settings = segmenter.config.postprocess if tta is None else postprocess_settings(segmenter.config.postprocess,
                                                                                     tta=tta)
    failed = 0
    for path in map(Path, paths):
        try:
            _, masks = segmenter.segment(images.read_image(path), settings)
            for c, name in enumerate(segmenter.classes):
                images.write_png(out / name / f"{path.stem}.png", masks[..., c] * np.uint8(255))
        except KerasUnetError as exc:
            failed += 1
            log(f"skipped: {exc}")
    log(f"{len(paths) - failed} image(s) segmented into {out}" + (f"; {failed} skipped" if failed else ""))
    return failed
