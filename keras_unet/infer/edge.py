"""Run an exported model with LiteRT (or ONNX Runtime), numpy and OpenCV only (no TensorFlow), for phones, small
boards and servers without TensorFlow.

`EdgeSegmenter` loads a .tflite (or .onnx) artefact with the run settings from the `metadata.json` beside it, as the
chain when the export holds the refine stage (`infer.load.load_exported`): `imaging.preprocess.prepare`, the
network, `unletterbox`, optional flip TTA (left_*/right_* channels swapped), the refine model on a crop around each
structure, then `imaging.postprocess.clean_masks`, in `infer.predictor`, as for every other runtime.

    python -m keras_unet.edge --model export/model_int8.tflite --input xray.png --out masks/ [--threads 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_unet.errors import ConfigError, KerasUnetError
from keras_unet.infer.load import load_exported, preferred_artifact, read_metadata
from keras_unet.infer.predictor import RefinedPredictor, postprocess_settings
from keras_unet.infer.runtimes import default_threads
from keras_unet.io import images
from keras_unet.run_folder import METADATA_FILE


class EdgeSegmenter:
    """Raw grayscale image in, (probabilities, cleaned uint8 masks) at the original size out, with LiteRT.

    model_path: a .tflite or .onnx file of an export (metadata.json beside it), or the export folder (its preferred
    artefact); num_threads: CPU threads (None: every core this process may use); refine False: the first stage
    alone. Every other attribute is the Predictor's (`predictor`): config, classes, predict_probs, ..."""

    def __init__(self, model_path, num_threads: int | None = None, refine: bool = True):
        path = Path(model_path)
        if path.is_dir() and (path / METADATA_FILE).is_file():
            path = preferred_artifact(path)
        if path.suffix.lower() not in (".tflite", ".onnx"):
            raise ConfigError(f"{path}: the edge runner takes a .tflite or an .onnx file (or an export folder)")
        self.metadata, config = read_metadata(path)
        self.threads = num_threads or default_threads()
        self.predictor = load_exported(path, refine, self.threads)
        expected = (config.image_size, config.image_size, 1)
        shape = getattr(getattr(self.predictor.network, "__self__", None), "input_shape", expected)
        if tuple(shape) != expected:
            raise ConfigError(f"{path}: input {tuple(shape)} does not match the config's {expected}")

    @property
    def refined(self) -> bool:
        """Whether the refine stage runs after the first."""
        return isinstance(self.predictor, RefinedPredictor)

    def __getattr__(self, name):
        if name == "predictor":  # not set yet: a failed __init__
            raise AttributeError(name)
        return getattr(self.predictor, name)


def segment_files(segmenter: EdgeSegmenter, paths, out, tta: bool | None = None, log=print) -> int:
    """Write out/<class>/<stem>.png (0/255) for each image; returns how many failed (reported, skipped)."""
    out = Path(out)
    settings = segmenter.config.postprocess if tta is None else postprocess_settings(segmenter.config.postprocess,
                                                                                     tta=tta)
    failed = 0
    for path in map(Path, paths):
        try:
            write_masks(out, path.stem, segmenter.classes, segmenter.segment(images.read_image(path), settings)[1])
        except KerasUnetError as exc:
            failed += 1
            log(f"skipped: {exc}")
    log(f"{len(paths) - failed} image(s) segmented into {out}" + (f"; {failed} skipped" if failed else ""))
    return failed


def write_masks(out: Path, stem: str, classes, masks: np.ndarray) -> None:
    """out/<class>/<stem>.png, 0/255, for each class of (H, W, C) 0/1 masks."""
    for c, name in enumerate(classes):
        images.write_png(Path(out) / name / f"{stem}.png", masks[..., c] * np.uint8(255))
