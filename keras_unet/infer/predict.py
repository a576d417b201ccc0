"""Segment image files into a folder: one mask per class, an overlay, and optionally Labelme pre-annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_unet.config import PostprocessConfig
from keras_unet.errors import DataError, KerasUnetError
from keras_unet.imaging.overlay import draw_overlay, save_rgb
from keras_unet.infer.preannotate import POLYGON_EPSILON, POLYGON_MIN_AREA, write_preannotation  # noqa: F401 (serve)
from keras_unet.infer.predictor import Predictor, select_classes
from keras_unet.io import images
from keras_unet.io.files import prepare_out_dir
from keras_unet.progress import Progress

def predict_image(predictor: Predictor, image_path, out: Path, settings: PostprocessConfig,
                  labelme: bool = False, classes=None) -> np.ndarray:
    """Segment one image file and write its masks, overlay and (optionally) Labelme file; returns the masks.

    classes: the subset of the model's classes to write (default: all)."""
    classes = select_classes(predictor, classes)
    image_path = Path(image_path)
    image = images.read_image(image_path)
    _, masks = predictor.segment(image, settings)
    masks = masks[..., [predictor.classes.index(name) for name in classes]]
    stem = image_path.stem
    for c, name in enumerate(classes):
        images.write_png(out / name / f"{stem}.png", masks[..., c] * np.uint8(255))
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    save_rgb(out / "overlays" / f"{stem}.png", draw_overlay(image, masks, classes=classes, title=stem))
    if labelme:
        write_preannotation(out / f"{stem}.json", masks, classes, image_path, image, predictor.config.normalization)
    return masks


def predict_folder(predictor: Predictor, source, out, settings: PostprocessConfig | None = None,
                   labelme: bool = False, overwrite: bool = False, log=print, progress=True, classes=None) -> dict:
    """Segment an image file or a folder of them into out/; bad images are reported and skipped."""
    settings = predictor.config.postprocess if settings is None else settings
    classes = select_classes(predictor, classes)  # an unknown class stops before any file is written
    paths = images.list_images(source)
    out = prepare_out_dir(out, overwrite)
    bar = Progress(len(paths)) if progress else None
    say = bar.say if bar else log
    written, failed, stems = 0, [], {}
    for path in paths:
        try:
            if path.stem in stems:
                raise DataError(path, f"has the same stem as {stems[path.stem].name}; its outputs would collide")
            stems[path.stem] = path
            predict_image(predictor, path, out, settings, labelme, classes)
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
