"""Labelme pre-annotations of predicted masks (`predict.py --labelme`, `--rank`): simplified polygons for an annotator
to correct, and, for images Labelme cannot open (16-bit, floating point, DICOM), an 8-bit copy beside the JSON.

The copy is the image windowed as the model saw it (the model's intensity normalisation, scaled to 0..255); the
JSON's imagePath points at it and its SOURCE_KEY entry (`"keras_unet": {"source_image": ..., "window": [lo, hi]}`)
names the original, relative to the JSON's folder, so that training on the corrected file reads the original's
pixel values (io.labelme.read_labelme honours the key). Labelme 7 keeps unknown top-level keys when it saves.

Polygons are the outlines of each predicted component in Labelme's coordinates (through the boundary pixels'
centres, pixel i spanning i .. i + 1), simplified by Douglas-Peucker with a tolerance of POLYGON_EPSILON pixels of
the image (less for a small component that would lose more than 1 - OUTLINE_DICE of its area): a few dozen vertices
per structure, rasterising back to the predicted mask with Dice of about 0.99.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_unet.imaging.postprocess import mask_to_polygons
from keras_unet.imaging.preprocess import intensity_window, normalize
from keras_unet.io import dicom, images
from keras_unet.io.labelme import SOURCE_KEY, labelme_document, write_labelme

POLYGON_MIN_AREA = 10  # pixels; smaller predicted components are left out of Labelme files


POLYGON_EPSILON = 1.0  # pixels of the image; Douglas-Peucker tolerance of the outlines written for correction


LABELME_OFFSET = 0.5  # added to pixel indices: Labelme's pixel i spans the coordinates i .. i + 1


OUTLINE_DICE = 0.985  # a component simplified below this Dice of its traced outline is simplified less


def labelme_polygons(mask) -> list[np.ndarray]:
    """The outlines of a 2-D mask's components in Labelme's coordinates, simplified for correction by hand."""
    return mask_to_polygons(mask, POLYGON_MIN_AREA, POLYGON_EPSILON, offset=LABELME_OFFSET, min_dice=OUTLINE_DICE)


def needs_8bit_copy(image: np.ndarray, image_path) -> bool:
    """Whether Labelme cannot open the image file as it is: more than 8 bits (16-bit, floating point) or DICOM."""
    return image.dtype != np.uint8 or dicom.is_dicom_file(image_path)


def display_8bit(image: np.ndarray, normalization) -> np.ndarray:
    """The grayscale image as uint8, windowed by the model's normalisation (its 0..1 scaled to 0..255)."""
    return np.round(normalize(image, normalization) * 255.0).astype(np.uint8)


def labelme_prediction(masks: np.ndarray, classes, image_path, json_path, source_image=None, window=None) -> dict:
    """A Labelme document whose polygons trace the masks, imagePath relative to the JSON's folder.

    source_image: the original when image_path is an 8-bit copy of it (recorded in SOURCE_KEY, with its window)."""
    shapes = [{"label": name, "points": polygon, "shape_type": "polygon"}
              for c, name in enumerate(classes) for polygon in labelme_polygons(masks[..., c])]
    folder = Path(json_path).parent
    document = labelme_document(shapes, _relative(image_path, folder), masks.shape[0], masks.shape[1])
    if source_image is not None:
        document[SOURCE_KEY] = {"source_image": _relative(source_image, folder),
                                "window": None if window is None else [float(v) for v in window]}
    return document


def write_preannotation(json_path, masks: np.ndarray, classes, image_path, image: np.ndarray, normalization) -> Path:
    """Write a pre-annotation JSON and, when Labelme cannot open the image, its 8-bit copy beside it; returns the JSON.

    image: the image as read (io.images.read_image); normalization: the model's NormalizationConfig."""
    json_path, image_path = Path(json_path), Path(image_path)
    if not needs_8bit_copy(image, image_path):
        write_labelme(json_path, labelme_prediction(masks, classes, image_path, json_path))
        return json_path
    copy = copy_path(json_path, image_path)
    images.write_png(copy, display_8bit(image, normalization))
    window = intensity_window(image, normalization.method, normalization.low, normalization.high,
                              normalization.sample_grid)
    write_labelme(json_path, labelme_prediction(masks, classes, copy, json_path, source_image=image_path,
                                                window=window))
    return json_path


def copy_path(json_path: Path, image_path: Path) -> Path:
    """Where the 8-bit copy goes: <stem>.png beside the JSON (Labelme pairs it with <stem>.json), never the original."""
    copy = json_path.with_suffix(".png")
    if os.path.abspath(copy) == os.path.abspath(image_path):
        copy = json_path.with_name(f"{json_path.stem}_8bit.png")
    return copy


def _relative(path, folder: Path) -> str:
    """A path relative to folder, '/'-separated (absolute when there is no relative path, e.g. another drive)."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix()
