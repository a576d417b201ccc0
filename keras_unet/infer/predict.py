"""Segment image files into a folder: one mask per class, an overlay, and optionally Labelme pre-annotations."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from keras_unet.config import PostprocessConfig
from keras_unet.errors import DataError, KerasUnetError
from keras_unet.imaging.overlay import draw_overlay, save_rgb
from keras_unet.infer.batch import DONE, FAILED, Batch
from keras_unet.infer.preannotate import POLYGON_EPSILON, POLYGON_MIN_AREA, write_preannotation  # noqa: F401 (serve)
from keras_unet.infer.predictor import Predictor, select_classes
from keras_unet.io import images
from keras_unet.io.files import DiskFullError
from keras_unet.progress import Progress
from keras_unet.run_folder import SUMMARY_FILE


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


def image_outputs(out, stem: str, classes, labelme: bool = False) -> list[Path]:
    """The files predict_image writes for an image of this stem: a mask per class, the overlay, the Labelme file."""
    out = Path(out)
    paths = [out / name / f"{stem}.png" for name in classes] + [out / "overlays" / f"{stem}.png"]
    return paths + ([out / f"{stem}.json"] if labelme else [])


def predict_folder(predictor: Predictor, source, out, settings: PostprocessConfig | None = None,
                   labelme: bool = False, overwrite: bool = False, log=print, progress=True, classes=None,
                   on_image=None) -> dict:
    """Segment an image file or a folder of them into out/; bad images are reported and skipped.

    on_image(path, masks, classes) is called for each image: segmented now, or by an earlier run (masks read back).
    Restartable: run again after a kill, it skips the images an earlier run finished (every output written and
    noted in the journal) and does the rest; overwrite redoes all. out/summary.json lists each image's outcome."""
    settings = predictor.config.postprocess if settings is None else settings
    classes = select_classes(predictor, classes)  # an unknown class stops before any file is written
    paths = images.list_images(source)
    record = {"input": os.path.abspath(Path(source).expanduser()), "model": predictor.source, "classes": classes,
              "labelme": labelme, "postprocess": dataclasses.asdict(settings)}
    with Batch(out, "predict", record, overwrite) as batch:
        out = batch.out
        todo = [p for p in paths if not (batch.finished(p) and all(f.is_file() for f in
                                                                   image_outputs(out, p.stem, classes, labelme)))]
        for path in sorted(set(paths) - set(todo)):
            batch.record(path, DONE, "by an earlier run")
            if on_image is not None:  # its masks as the earlier run wrote them: whatever on_image collects stays whole
                masks = np.stack([images.read_image(out / name / f"{path.stem}.png") > 0 for name in classes], -1)
                on_image(path, masks.astype(np.uint8), classes)
        bar = Progress(len(todo)) if progress and todo else None
        say = bar.say if bar else log
        stems = {p.stem: p for p in paths if p not in todo}
        for path in todo:
            try:
                if path.stem in stems:
                    raise DataError(path, f"has the same stem as {stems[path.stem].name}; its outputs would collide")
                stems[path.stem] = path
                masks = predict_image(predictor, path, out, settings, labelme, classes)
                if on_image is not None:
                    on_image(path, masks, classes)
                batch.record(path, DONE)
            except DiskFullError:
                raise  # no use going on: every later image would fail the same way
            except KerasUnetError as exc:
                batch.record(path, FAILED, str(exc))
                say(f"skipped: {exc}")
            if bar:
                bar.step()
        if bar:
            bar.close()
        counts, earlier = batch.counts(), len(paths) - len(todo)
    written = counts[DONE] - earlier
    failed = [entry["image"] for entry in batch.records.values() if entry["status"] == FAILED]
    log(f"{written} image(s) segmented into {out}" + (f"; {earlier} done by an earlier run" if earlier else "")
        + (f"; {len(failed)} skipped" if failed else "") + f" (list: {out / SUMMARY_FILE})")
    return {"written": written, "earlier": earlier, "failed": failed, "out": str(out)}
