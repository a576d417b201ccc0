"""Load a trained model in any of its runtimes (Keras, SavedModel, TFLite, ONNX) and segment X-ray images.

Every runtime goes through the same steps, so thresholds and scores do not depend on the runtime:
`preprocess.prepare` (normalise, letterbox to the square network input), the network, then `preprocess.unletterbox`
back to the image's original size. Test-time augmentation (TTA) averages that with the same steps run on the
horizontally flipped image, whose output is flipped back and has its left_*/right_* channels swapped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from keras_unet import images
from keras_unet.config import REFINE_DIR, Config, PostprocessConfig, config_from_dict, load_config
from keras_unet.errors import ConfigError, DataError, KerasUnetError, first_line
from keras_unet.postprocess import mask_to_polygons
from keras_unet.segmenter import Predictor, RefinedPredictor

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
POLYGON_MIN_AREA = 10  # pixels; smaller predicted components are left out of Labelme files
POLYGON_EPSILON = 0.5  # pixels; outline simplification for Labelme files


# -- loading ------------------------------------------------------------------------------------------


def load_predictor(path, refine: bool = True) -> Predictor:
    """A Predictor for a model.keras (or its run folder), a SavedModel folder, a .tflite or an .onnx file.

    A model.keras whose run trained a refine stage comes with it (refine=False leaves it out)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "model not found")
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise DataError(path, f"folder holds neither {MODEL_FILE} nor a SavedModel (saved_model.pb)")
        config = _read_settings([path / METADATA_FILE, path.parent / METADATA_FILE,
                                 path / CONFIG_FILE, path.parent / CONFIG_FILE], path)
        return Predictor(_saved_model_network(path), config, path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        config = _read_settings([path.parent / CONFIG_FILE, path.parent / METADATA_FILE], path)
        predictor = Predictor(_keras_network(path, config), config, path)
        return _with_refine_stage(predictor, path.parent / REFINE_DIR) if refine and config.refine.enabled else predictor
    if suffix == ".tflite":
        config = _read_settings([path.parent / METADATA_FILE], path)
        from keras_unet.edge import TFLiteModel

        return Predictor(TFLiteModel(str(path)).predict, config, path)
    if suffix == ".onnx":
        config = _read_settings([path.parent / METADATA_FILE], path)
        from keras_unet.onnx_model import OnnxModel

        return Predictor(OnnxModel(str(path)).predict, config, path)
    raise DataError(path, "not a model: expected model.keras, a SavedModel folder, a .tflite or an .onnx file")


def _with_refine_stage(predictor: Predictor, folder: Path) -> Predictor:
    """The predictor with its run's refine stage, or alone (and a warning) when that stage never finished."""
    if not (folder / MODEL_FILE).is_file():
        print(f"warning: {folder}: the refine stage has no {MODEL_FILE} (training unfinished?); "
              "using the first stage alone", file=sys.stderr)
        return predictor
    return RefinedPredictor(predictor, load_predictor(folder, refine=False))


def _read_settings(candidates, model_path) -> Config:
    """The run Config from the first settings file that exists (config.json, or metadata.json's "config")."""
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if candidate.name == METADATA_FILE:
            config = _config_from_metadata(candidate)
        else:
            config = load_config(candidate)
        if not config.classes:
            raise ConfigError(f"{candidate}: lists no classes; cannot name the model's outputs")
        return config.validate()
    names = ", ".join(sorted({str(c) for c in candidates}))
    raise ConfigError(f"{model_path}: no run settings found (looked for {names})")


def _config_from_metadata(path: Path) -> Config:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read metadata ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict) or not isinstance(values.get("config"), dict):
        raise ConfigError(f"{path}: metadata has no \"config\" mapping of run settings")
    return config_from_dict(values["config"], f"{path}: config")


def _keras_network(path: Path, config: Config):
    """A traced call of a .keras model (loaded with safe_mode) on float32 batches."""
    import keras
    import tensorflow as tf

    import keras_unet.losses  # noqa: F401  (registers the custom losses and metrics for loading)

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a broken or foreign file
        raise DataError(path, f"cannot load the Keras model ({first_line(exc)})") from None
    if not tf.config.list_physical_devices("GPU"):
        from keras_unet.export import float32_model

        model = float32_model(model, config)  # float16 layers are slow or unsupported on CPUs
    size = config.image_size
    signature = [tf.TensorSpec([None, size, size, 1], tf.float32)]
    forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), input_signature=signature)
    return lambda batch: forward(tf.constant(batch)).numpy()


def _saved_model_network(path: Path):
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
        out = serve(tf.constant(batch))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return np.asarray(out)

    return network


# -- settings -----------------------------------------------------------------------------------------


def postprocess_settings(base: PostprocessConfig, enabled: bool = True, tta: bool = True,
                         threshold: float | None = None) -> PostprocessConfig:
    """The run's clean-up settings with command-line switches applied (a threshold replaces per-class ones)."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {threshold}")
    changes = {"enabled": base.enabled and enabled, "tta": base.tta and tta}
    if threshold is not None:
        changes.update(threshold=float(threshold), thresholds={})
    return dataclasses.replace(base, **changes)


def prepare_out_dir(out, overwrite: bool, what: str = "output folder") -> Path:
    """Create an output folder, refusing one that already holds files unless overwrite is set."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: {what} already exists; use another --out, or --overwrite to replace its files")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Progress:
    """A one-line `done/total` counter on stderr, redrawn at most a few times a second."""

    def __init__(self, total: int, stream=None, every: float = 0.25):
        self.total, self.done, self.stream, self.every, self._last = total, 0, stream or sys.stderr, every, 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every or self.done == self.total:
            self._last = now
            self.stream.write(f"\r{self.done}/{self.total} images")
            self.stream.flush()

    def say(self, line: str) -> None:
        """Print a line without garbling the counter."""
        if self.done:
            self.stream.write("\r" + " " * 40 + "\r")
        self.stream.write(line + "\n")
        self._last = 0.0

    def close(self) -> None:
        if self.done:
            self.stream.write("\n")
            self.stream.flush()


# -- predicting a folder ------------------------------------------------------------------------------


def list_images(path) -> list[Path]:
    """An image file as a one-item list, or a folder's image files, DICOM of any name too (not recursive, sorted)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "input not found")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if images.is_image_file(p))
    if not found:
        raise DataError(path, f"no image files ({', '.join(images.IMAGE_SUFFIXES)}, or DICOM) in this folder")
    return found


def labelme_prediction(masks: np.ndarray, classes, image_path, json_path) -> dict:
    """A Labelme document whose polygons trace the masks, with imagePath relative to the JSON's folder."""
    shapes = []
    for c, name in enumerate(classes):
        for polygon in mask_to_polygons(masks[..., c], POLYGON_MIN_AREA, POLYGON_EPSILON):
            shapes.append({"label": name, "points": polygon, "shape_type": "polygon"})
    from keras_unet.annotations import labelme_document

    relative = os.path.relpath(os.path.abspath(image_path), os.path.dirname(os.path.abspath(json_path)))
    return labelme_document(shapes, Path(relative).as_posix(), masks.shape[0], masks.shape[1])


def predict_image(predictor: Predictor, image_path, out: Path, settings: PostprocessConfig,
                  labelme: bool = False) -> np.ndarray:
    """Segment one image file and write its masks, overlay and (optionally) Labelme file; returns the masks."""
    from keras_unet.overlay import draw_overlay, save_rgb

    image_path = Path(image_path)
    image = images.read_image(image_path)
    _, masks = predictor.segment(image, settings)
    stem = image_path.stem
    for c, name in enumerate(predictor.classes):
        images.write_png(out / name / f"{stem}.png", masks[..., c] * np.uint8(255))
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    save_rgb(out / "overlays" / f"{stem}.png", draw_overlay(image, masks, classes=predictor.classes, title=stem))
    if labelme:
        from keras_unet.annotations import write_labelme

        json_path = out / f"{stem}.json"
        write_labelme(json_path, labelme_prediction(masks, predictor.classes, image_path, json_path))
    return masks


def predict_folder(predictor: Predictor, source, out, settings: PostprocessConfig | None = None,
                   labelme: bool = False, overwrite: bool = False, log=print, progress=True) -> dict:
    """Segment an image file or a folder of them into out/; bad images are reported and skipped."""
    settings = predictor.config.postprocess if settings is None else settings
    paths = list_images(source)
    out = prepare_out_dir(out, overwrite)
    bar = Progress(len(paths)) if progress else None
    say = bar.say if bar else log
    written, failed, stems = 0, [], {}
    for path in paths:
        try:
            if path.stem in stems:
                raise DataError(path, f"has the same stem as {stems[path.stem].name}; its outputs would collide")
            stems[path.stem] = path
            predict_image(predictor, path, out, settings, labelme)
            written += 1
        except KerasUnetError as exc:
            failed.append(str(path))
            say(f"skipped: {exc}")
        if bar:
            bar.step()
    if bar:
        bar.close()
    log(f"{written} image(s) segmented into {out}" + (f"; {len(failed)} skipped" if failed else ""))
    return {"written": written, "failed": failed, "out": str(out)}
