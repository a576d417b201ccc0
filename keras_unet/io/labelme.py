"""Read and write Labelme JSON annotations (versions 3 to 7) as plain data (numpy + OpenCV only).

Unknown keys (Labelme 7's per-shape `locked`, Labelme 3's colours, other tools' extras) are ignored. A file
may name its original image in SOURCE_KEY (written beside an 8-bit copy by pre-annotations): that image, not
imagePath or imageData, is then the one read.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import cv2
import numpy as np

from keras_unet.classes import IGNORED_LABELS
from keras_unet.errors import DataError
from keras_unet.io import images
from keras_unet.io.files import is_file, is_inside, read_bytes, write_bytes_atomic

LABELME_VERSION = "7.9.1"  # what Labelme 7.9.1 writes (it reads any version; Labelme 5 opens it with a warning)
SHAPE_TYPES = ("polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "point", "points", "mask")
MAX_COORDINATE = 1e9  # pixels; points farther out are refused rather than drawn
MIN_POINTS = {"polygon": 3, "rectangle": 2, "oriented_rectangle": 4, "circle": 2, "line": 2, "linestrip": 2,
              "point": 1, "points": 1, "mask": 2}
EXACT_POINTS = {"oriented_rectangle": 4, "circle": 2, "mask": 2}  # shape types with a fixed number of points
SOURCE_KEY = "keras_unet"  # top-level key: {"source_image": the original image, relative to the JSON's folder}


@dataclass(frozen=True, eq=False)
class Shape:
    """One Labelme shape; points are (N, 2) float64 x, y in Labelme's coordinates (pixel i spans i .. i + 1)."""

    label: str
    shape_type: str
    points: np.ndarray
    mask: np.ndarray | None = None  # bool (h, w), for shape_type 'mask': the box at points[0] .. points[1]
    group_id: int | None = None

    def __eq__(self, other):
        if not isinstance(other, Shape):
            return NotImplemented
        return (
            (self.label, self.shape_type, self.group_id) == (other.label, other.shape_type, other.group_id)
            and np.array_equal(self.points, other.points)
            and (self.mask is None) == (other.mask is None)
            and (self.mask is None or np.array_equal(self.mask, other.mask))
        )


@dataclass
class Annotation:
    """A parsed Labelme file: where its image is, its declared size, and its shapes."""

    json_path: Path
    image_path: Path | None
    image_data: bytes | None
    height: int
    width: int
    shapes: list[Shape]
    outside_data_dir: bool = False  # the image file lies outside the data folder given to read_labelme
    version: str = ""
    warnings: list[str] = field(default_factory=list)


def read_labelme(json_path, data_dir=None) -> Annotation:
    """Parse a Labelme JSON file into an Annotation, raising DataError for anything unusable."""
    json_path = Path(json_path)
    document = _load_json(json_path)
    warnings: list[str] = []
    image_data = _image_data(document, json_path)
    image_path = _image_path(document, json_path, warnings, need_file=image_data is None)
    source = _source_image(document, json_path, warnings)
    if source is not None:
        image_data, image_path = None, source
    if image_data is None and image_path is None:
        raise DataError(json_path, "has neither imageData nor imagePath: cannot find its image")
    shapes = [_parse_shape(raw, index, json_path, warnings) for index, raw in enumerate(document["shapes"])]
    height, width = _declared_size(document, json_path)
    if height is None:
        if image_data is not None:
            height, width = images.image_dimensions(image_data, json_path)
        else:
            height, width = images.image_dimensions(read_bytes(image_path), image_path)
    outside = False
    if data_dir is not None and image_data is None and image_path is not None:
        outside = not is_inside(image_path, Path(data_dir))
    version = document.get("version")
    return Annotation(
        json_path=json_path,
        image_path=image_path,
        image_data=image_data,
        height=height,
        width=width,
        shapes=shapes,
        outside_data_dir=outside,
        version=str(version) if version is not None else "",
        warnings=warnings,
    )


def load_image(annotation: Annotation) -> np.ndarray:
    """The annotation's image as a 2-D grayscale array, checked against the annotation's size."""
    if annotation.image_data is not None:
        image = images.decode_image(annotation.image_data, annotation.json_path)
    elif annotation.image_path is not None:
        image = images.read_image(annotation.image_path)
    else:
        raise DataError(annotation.json_path, "has neither imageData nor imagePath: cannot find its image")
    _check_size(annotation, image.shape[0], image.shape[1])
    return image


def check_image_size(annotation: Annotation) -> None:
    """Raise DataError when the image's header size differs from the annotation's, without decoding."""
    if annotation.image_data is not None:
        height, width = images.image_dimensions(annotation.image_data, annotation.json_path)
    elif annotation.image_path is not None:
        height, width = images.image_dimensions(read_bytes(annotation.image_path), annotation.image_path)
    else:
        raise DataError(annotation.json_path, "has neither imageData nor imagePath: cannot find its image")
    _check_size(annotation, height, width)


def find_annotations(data_dir) -> list[Path]:
    """Sorted Labelme JSON files under a folder, recursively, skipping hidden folders and `masks` folders."""
    data_dir = Path(data_dir)
    found = walk_json(data_dir)
    if not found:
        raise DataError(data_dir, "no Labelme .json files found in this folder or its subfolders")
    return found




def labelme_document(shapes, image_path: str, height: int, width: int, image_data: bytes | None = None,
                     digits: int | None = None) -> dict:
    """A Labelme JSON document (a dict) holding shapes, e.g. predicted polygons, for an image (digits: rounding)."""
    out = []
    for shape in shapes:
        if isinstance(shape, Shape):
            label, shape_type, points = shape.label, shape.shape_type, shape.points
            group_id, mask = shape.group_id, shape.mask
        else:
            label, points = shape["label"], shape["points"]
            shape_type = shape.get("shape_type") or "polygon"
            group_id, mask = shape.get("group_id"), shape.get("mask")
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out.append(
            {
                "label": str(label),
                "points": [[_coordinate(x, digits), _coordinate(y, digits)] for x, y in points],
                "group_id": None if group_id is None else int(group_id),
                "description": "",
                "shape_type": shape_type,
                "flags": {},
                "mask": None if mask is None else _mask_to_base64(mask),
            }
        )
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": out,
        "imagePath": str(image_path),
        "imageData": None if image_data is None else base64.b64encode(image_data).decode("ascii"),
        "imageHeight": int(height),
        "imageWidth": int(width),
    }


def _coordinate(value, digits: int | None) -> float:
    return float(value) if digits is None else round(float(value), digits)


def write_labelme(path, document: dict) -> None:
    """Write a Labelme JSON document atomically (UTF-8, indented as Labelme does)."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"), durable=True)


# -- parsing helpers ---------------------------------------------------------------------------------


def _load_json(json_path: Path) -> dict:
    raw = read_bytes(json_path)
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(json_path, "not UTF-8 text: not a Labelme JSON file") from None
    except json.JSONDecodeError as error:
        raise DataError(json_path, f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise DataError(json_path, "malformed JSON: nested too deeply (more than Python's recursion limit)") from None
    if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
        raise DataError(json_path, "not a Labelme annotation (no 'shapes' list)")
    return document


def labels_found(json_files) -> tuple[set, list]:
    """Class labels of every readable file, and the DataErrors of the others (reported later, file by file)."""
    found, errors = set(), []
    for path in json_files:
        try:
            found.update(shape.label for shape in _read_shapes_only(path))
        except DataError as error:
            errors.append(error)
    return found - set(IGNORED_LABELS), errors


def _read_shapes_only(json_path: Path) -> list[Shape]:
    document = _load_json(json_path)
    return [_parse_shape(raw, index, json_path, []) for index, raw in enumerate(document["shapes"])]


def _image_data(document: dict, json_path: Path) -> bytes | None:
    value = document.get("imageData")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(json_path, "imageData is not a base64 string")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DataError(json_path, "imageData is not valid base64") from None
    if not data:
        raise DataError(json_path, "imageData is empty")
    return data


def _image_path(document: dict, json_path: Path, warnings: list[str], need_file: bool) -> Path | None:
    value = document.get("imagePath")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(json_path, "imagePath is not a string")
    return _resolve(value, json_path, warnings, need_file, "imagePath")


def _source_image(document: dict, json_path: Path, warnings: list[str]) -> Path | None:
    """The original image a pre-annotation names in SOURCE_KEY, when it is there (else a warning and None)."""
    extra = document.get(SOURCE_KEY)
    if extra is None:
        return None
    value = extra.get("source_image") if isinstance(extra, dict) else None
    if not isinstance(value, str) or not value:
        raise DataError(json_path, f"{SOURCE_KEY!r} is not an object with a 'source_image' path")
    path = _resolve(value, json_path, warnings, False, f"{SOURCE_KEY}.source_image")  # never the copy beside it
    if is_file(path):
        return path
    warnings.append(f"{json_path}: its original image {value!r} ({SOURCE_KEY}.source_image) is not found; "
                    "using imagePath or imageData (the 8-bit copy the annotator saw) instead")
    return None


def _resolve(value: str, json_path: Path, warnings: list[str], need_file: bool, what: str) -> Path:
    """A path written in a Labelme file (POSIX or Windows, relative to the JSON's folder), found beside it if moved."""
    folder = json_path.parent
    if "\\" in value or PureWindowsPath(value).drive:
        windows = PureWindowsPath(value)
        relative = not windows.drive and not windows.root
        candidate = folder.joinpath(*windows.parts) if relative else Path(*windows.parts)
        name = windows.name
    else:
        candidate = folder / value if not PurePosixPath(value).is_absolute() else Path(value)
        name = PurePosixPath(value).name
    if need_file and not is_file(candidate):
        beside = folder / name
        if name and is_file(beside):
            warnings.append(f"{json_path}: {what} {value!r} not found; using {name} beside the JSON")
            return beside
    return candidate


def _declared_size(document: dict, json_path: Path) -> tuple[int | None, int | None]:
    height, width = document.get("imageHeight"), document.get("imageWidth")
    if height is None or width is None:
        return None, None
    for name, value in (("imageHeight", height), ("imageWidth", width)):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value) or value <= 0):
            raise DataError(json_path, f"{name} is {value!r}; expected a positive whole number")
    if int(height) * int(width) > images.MAX_PIXELS:
        raise DataError(json_path, f"imageWidth x imageHeight is {int(width)}x{int(height)} = "
                                   f"{int(width) * int(height):,} pixels, more than the {images.MAX_PIXELS:,} limit")
    return int(height), int(width)


def _parse_shape(raw, index: int, json_path: Path, warnings: list[str]) -> Shape:
    if not isinstance(raw, dict):
        raise DataError(json_path, f"shape {index} is not a JSON object")
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        raise DataError(json_path, f"shape {index} has no label")
    where = f"shape {index} ({label!r})"
    shape_type = raw.get("shape_type") or "polygon"  # Labelme 3 files may omit it
    if shape_type not in SHAPE_TYPES:
        raise DataError(json_path, f"{where}: unknown shape_type {shape_type!r}")
    points = _parse_points(raw.get("points"), json_path, where)
    need = MIN_POINTS[shape_type]
    if len(points) < need:
        raise DataError(
            json_path, f"{where}: a {shape_type} needs at least {need} points, this one has {len(points)}"
        )
    if shape_type in EXACT_POINTS and len(points) != EXACT_POINTS[shape_type]:
        article = "an" if shape_type[0] in "aeiou" else "a"
        raise DataError(json_path, f"{where}: {article} {shape_type} needs exactly {EXACT_POINTS[shape_type]} points, "
                                   f"this one has {len(points)}")
    group_id = raw.get("group_id")
    if group_id is not None and (isinstance(group_id, bool) or not isinstance(group_id, int)):
        raise DataError(json_path, f"{where}: group_id {group_id!r} is not a whole number")
    mask = _parse_mask(raw.get("mask"), json_path, where) if shape_type == "mask" else None
    if mask is not None and np.array_equal(points, np.trunc(points)):  # whole-pixel bounds name the patch's size
        (x1, y1), (x2, y2) = np.sort(points, axis=0).astype(np.int64)
        if mask.shape != (y2 - y1 + 1, x2 - x1 + 1):
            warnings.append(
                f"{json_path}: {where}: mask is {mask.shape[1]}x{mask.shape[0]} but its box is "
                f"{x2 - x1 + 1}x{y2 - y1 + 1}; pasted at the box's top-left corner, cut to the box"
            )
    points.setflags(write=False)
    return Shape(label=label, shape_type=shape_type, points=points, mask=mask, group_id=group_id)


def _parse_points(value, json_path: Path, where: str) -> np.ndarray:
    if not isinstance(value, list):
        raise DataError(json_path, f"{where}: 'points' is not a list")
    for point in value:
        if (
            not isinstance(point, (list, tuple))
            or len(point) != 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in point)
        ):
            raise DataError(json_path, f"{where}: point {point!r} is not a pair of numbers [x, y]")
        if any(abs(c) > MAX_COORDINATE and not (isinstance(c, float) and math.isinf(c)) for c in point):
            raise DataError(json_path, f"{where}: point {point!r} lies more than {MAX_COORDINATE:.0e} pixels out")
        if not all(math.isfinite(c) for c in point):
            raise DataError(json_path, f"{where}: point {point!r} is not finite (NaN or infinity)")
    return np.array(value, dtype=np.float64).reshape(-1, 2)


def _parse_mask(value, json_path: Path, where: str) -> np.ndarray:
    if not isinstance(value, str) or not value:
        raise DataError(json_path, f"{where}: a mask shape needs a base64 PNG in 'mask'")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DataError(json_path, f"{where}: 'mask' is not valid base64") from None
    try:
        array = images.decode_image(data, json_path)
    except DataError as error:
        raise DataError(json_path, f"{where}: 'mask' is not a readable image ({error.problem})") from None
    mask = array > 0
    mask.setflags(write=False)
    return mask


def _mask_to_base64(mask) -> str:
    ok, encoded = cv2.imencode(".png", np.asarray(mask, dtype=bool).astype(np.uint8))
    if not ok:
        raise ValueError("OpenCV could not encode the mask as PNG")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def _check_size(annotation: Annotation, height: int, width: int) -> None:
    if (height, width) != (annotation.height, annotation.width):
        where = annotation.image_path if annotation.image_data is None else "the embedded imageData"
        raise DataError(
            annotation.json_path,
            f"image is {width}x{height} but the annotation says {annotation.width}x{annotation.height} ({where})",
        )


def walk_json(data_dir: Path) -> list[Path]:
    if not data_dir.exists():
        raise DataError(data_dir, "folder not found")
    if not data_dir.is_dir():
        raise DataError(data_dir, "not a folder")
    found = []
    for root, folders, files in os.walk(data_dir):
        folders[:] = [name for name in folders if not name.startswith(".") and name != "masks"]
        found.extend(Path(root) / name for name in files if name.lower().endswith(".json") and not name.startswith("."))
    return sorted(found, key=lambda path: path.relative_to(data_dir).as_posix())



