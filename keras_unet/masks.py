"""Rasterise Labelme shapes into per-class masks, and cache images + masks for training (numpy + OpenCV only).

Pixel convention (Labelme's, and that of masks traced into polygons): integer coordinates are pixel
centres and a shape's outline pixels belong to it, so a polygon traced through the boundary pixels of
a mask fills that mask back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from keras_unet import annotations as ann
from keras_unet import images
from keras_unet.cli import run_main
from keras_unet.errors import ConfigError, DataError

CACHE_FORMAT = 1  # bump when cached files would come out differently
INDEX_NAME = "index.json"
IMAGES_FOLDER = "images"
_SHIFT = 4  # sub-pixel bits handed to OpenCV's drawing functions (1/16 pixel)


@dataclass
class RasterStats:
    """What rasterising left out or changed, and how many pixels each class got."""

    skipped: Counter = field(default_factory=Counter)  # label -> shapes whose label is not a class
    ignored_points: int = 0  # point shapes (no area; not drawn)
    clipped_points: int = 0  # vertices outside the image (the shape is cut at the border)
    pixels: dict = field(default_factory=dict)  # class -> foreground pixels

    def __add__(self, other: RasterStats) -> RasterStats:
        pixels = dict(self.pixels)
        for name, count in other.pixels.items():
            pixels[name] = pixels.get(name, 0) + count
        return RasterStats(
            skipped=self.skipped + other.skipped,
            ignored_points=self.ignored_points + other.ignored_points,
            clipped_points=self.clipped_points + other.clipped_points,
            pixels=pixels,
        )

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return {
            "skipped": dict(self.skipped),
            "ignored_points": self.ignored_points,
            "clipped_points": self.clipped_points,
            "pixels": dict(self.pixels),
        }

    @classmethod
    def from_dict(cls, data: dict) -> RasterStats:
        """The inverse of to_dict."""
        return cls(
            skipped=Counter({str(k): int(v) for k, v in data.get("skipped", {}).items()}),
            ignored_points=int(data.get("ignored_points", 0)),
            clipped_points=int(data.get("clipped_points", 0)),
            pixels={str(k): int(v) for k, v in data.get("pixels", {}).items()},
        )


@dataclass
class Sample:
    """One training example on disk: a single-channel PNG image and one 0/255 PNG mask per class."""

    stem: str
    image_path: Path  # a DICOM source is converted once into a 16-bit PNG in the cache
    mask_paths: list[Path]
    source: Path  # the Labelme JSON, or the user's image file in an image + mask folder
    spacing: tuple[float, float] | None = None  # (row, column) mm per pixel, from a DICOM source's header


# -- rasterising --------------------------------------------------------------------------------------


def rasterize(annotation: ann.Annotation, classes, line_width: int = 3) -> tuple[np.ndarray, RasterStats]:
    """(H, W, C) uint8 0/1 masks, one channel per class (shapes fill only their own class), and stats."""
    classes = list(classes)
    if line_width < 1:
        raise ValueError(f"line_width must be at least 1, not {line_width}")
    height, width = annotation.height, annotation.width
    channel = {name: index for index, name in enumerate(classes)}
    planes = [np.zeros((height, width), dtype=np.uint8) for _ in classes]
    stats = RasterStats()
    for shape in annotation.shapes:
        if shape.label not in channel:
            stats.skipped[shape.label] += 1
            continue
        if shape.shape_type in ("point", "points"):
            stats.ignored_points += 1
            continue
        stats.clipped_points += count_outside(shape.points, height, width)
        draw_shape(planes[channel[shape.label]], shape, line_width)
    stats.pixels = {name: int(np.count_nonzero(plane)) for name, plane in zip(classes, planes)}
    if not planes:
        return np.zeros((height, width, 0), dtype=np.uint8), stats
    return np.stack(planes, axis=-1), stats


def count_outside(points: np.ndarray, height: int, width: int) -> int:
    """How many points lie outside the image's pixels (pixel i spans i - 0.5 .. i + 0.5)."""
    x, y = points[:, 0], points[:, 1]
    outside = (x < -0.5) | (x >= width - 0.5) | (y < -0.5) | (y >= height - 0.5)
    return int(np.count_nonzero(outside))


def draw_shape(plane: np.ndarray, shape: ann.Shape, line_width: int = 3) -> None:
    """Set to 1 the pixels of a 2-D uint8 plane that a shape covers (point shapes draw nothing)."""
    height, width = plane.shape
    shift = _SHIFT if max(height, width) < (1 << 25) else 0
    kind = shape.shape_type
    if kind in ("polygon", "rectangle"):
        points = shape.points
        if kind == "rectangle":
            (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
            points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        margin = float(max(height, width) + 2)  # vertices this far out are cut; nearer ones are drawn as they are
        points = _clip_polygon(points, -margin, -margin, width - 1 + margin, height - 1 + margin)
        if len(points):
            cv2.fillPoly(plane, [_fixed(points, shift)], 1, lineType=cv2.LINE_8, shift=shift)
    elif kind == "circle":
        centre = shape.points[0]
        radius = float(np.hypot(*(shape.points[1] - centre)))
        _fill_near(plane, centre[None, :], radius)
    elif kind in ("line", "linestrip"):
        points = shape.points
        for start, end in zip(points[:-1], points[1:]):
            _fill_near(plane, np.stack([start, end]), line_width / 2)
    elif kind == "mask":
        _paste_mask(plane, shape)


def _fill_near(plane: np.ndarray, segment: np.ndarray, radius: float) -> None:
    """Set the pixels whose centres lie within radius of a point or segment (1 or 2 rows of x, y)."""
    height, width = plane.shape
    low = np.floor(segment.min(axis=0) - radius)
    high = np.ceil(segment.max(axis=0) + radius)
    x0, x1 = (int(np.clip(v, 0, width - 1)) for v in (low[0], high[0]))
    y0, y1 = (int(np.clip(v, 0, height - 1)) for v in (low[1], high[1]))
    a = segment[0]
    d = segment[-1] - a
    length = float(d @ d)
    x = np.arange(x0, x1 + 1, dtype=np.float64)[None, :] - a[0]
    rows = max(1, (1 << 20) // (x1 - x0 + 1))  # bounded memory for huge shapes
    for top in range(y0, y1 + 1, rows):
        y = np.arange(top, min(top + rows, y1 + 1), dtype=np.float64)[:, None] - a[1]
        t = 0.0 if length == 0 else np.clip((x * d[0] + y * d[1]) / length, 0.0, 1.0)
        near = (x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 <= radius * radius + 1e-9
        plane[top : top + near.shape[0], x0 : x1 + 1] |= near.view(np.uint8)


def _clip_polygon(points: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """The polygon cut to a box (Sutherland-Hodgman), so far-away vertices cost nothing to fill."""
    if (points.min(axis=0) >= (left, top)).all() and (points.max(axis=0) <= (right, bottom)).all():
        return points
    polygon = [tuple(p) for p in points]
    for axis, bound, keep_above in ((0, left, True), (0, right, False), (1, top, True), (1, bottom, False)):
        def inside(p):
            return p[axis] >= bound if keep_above else p[axis] <= bound

        clipped = []
        for k, current in enumerate(polygon):
            previous = polygon[k - 1]
            if inside(current) != inside(previous):
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                crossing = [previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1])]
                crossing[axis] = bound
                clipped.append(tuple(crossing))
            if inside(current):
                clipped.append(current)
        polygon = clipped
        if not polygon:
            return np.zeros((0, 2))
    return np.array(polygon, dtype=np.float64)


def _fixed(points: np.ndarray, shift: int) -> np.ndarray:
    limit = float((1 << 29) >> shift)  # keeps far-away points inside int32 once shifted
    return np.round(np.clip(points, -limit, limit) * (1 << shift)).astype(np.int32)


def _paste_mask(plane: np.ndarray, shape: ann.Shape) -> None:
    if shape.mask is None:
        return
    x0, y0 = (int(v) for v in np.floor(shape.points.min(axis=0)))
    h, w = shape.mask.shape
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + h, plane.shape[0]), min(x0 + w, plane.shape[1])
    if bottom <= top or right <= left:
        return
    region = shape.mask[top - y0 : bottom - y0, left - x0 : right - x0]
    plane[top:bottom, left:right] |= region.astype(np.uint8)


# -- the cache ----------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """$KERAS_UNET_CACHE, else ~/.cache/keras_unet."""
    value = os.environ.get("KERAS_UNET_CACHE", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "keras_unet"


def cache_folder(data_dir, classes, line_width: int = 3, cache_dir=None) -> Path:
    """The cache subfolder for one data folder, class list and line width."""
    data_dir = Path(os.path.abspath(Path(data_dir).expanduser()))
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    key = json.dumps([CACHE_FORMAT, str(data_dir), list(classes), int(line_width)])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in data_dir.name) or "data"
    return Path(os.path.abspath(root)) / f"{name}-{digest}"


def sample_stem(json_path, data_dir) -> str:
    """A file's path relative to data_dir without its suffix, with '/' replaced by '__'."""
    relative = Path(json_path).relative_to(data_dir).with_suffix("")
    return "__".join(relative.parts)


def prepare_samples(data_dir, classes, cache_dir=None, line_width: int = 3, log=print, skip_bad: bool = False,
                    bad: list | None = None) -> list[Sample]:
    """Samples for a Labelme folder (masks cached) or an image + masks/ folder; bad files raise, or with skip_bad are left out and appended to `bad`."""
    data_dir = Path(os.path.abspath(Path(data_dir).expanduser()))
    if not data_dir.is_dir():
        raise DataError(data_dir, "folder not found" if not data_dir.exists() else "not a folder")
    classes = _check_classes(classes)
    if line_width < 1:
        raise ConfigError(f"line_width must be at least 1, not {line_width}")
    cache = cache_folder(data_dir, classes, line_width, cache_dir)
    if _is_inside(cache, data_dir):
        raise ConfigError(
            f"the cache folder {cache} is inside the data folder {data_dir}; "
            "choose a cache folder elsewhere (cache_dir or $KERAS_UNET_CACHE)"
        )
    try:
        json_files = ann.find_annotations(data_dir)
    except DataError:
        json_files = []
    log = log or (lambda line: None)
    if json_files:
        problems: list[tuple[Path, str]] = []
        samples = _prepare_labelme(data_dir, json_files, classes, cache, line_width, log, problems)
        if problems and not skip_bad:
            raise bad_files_error(data_dir, problems, len(json_files))
        if bad is not None:
            bad.extend(problems)
        if not samples:
            raise DataError(data_dir, f"none of the {len(json_files)} annotation files can be used")
        return samples
    if (data_dir / "masks").is_dir():
        return _prepare_image_masks(data_dir, classes, cache, log)
    raise DataError(data_dir, "no Labelme .json files, and no masks/<class>/<stem>.png files beside images")


def bad_files_error(folder, problems, total: int) -> DataError:
    """One DataError listing every unusable file with its problem, one per line."""
    lines = [f"  {path}: {problem}" for path, problem in problems]
    usable = total - len(problems)
    hint = f"(--skip-bad trains on the other {usable})" if usable else "(none of them is usable)"
    return DataError(folder, "\n".join([f"{len(problems)} of {total} annotation files cannot be used:", *lines, hint]))


def file_problem(json_path, error: DataError) -> str:
    """The problem of one annotation file, naming the image file when that is where it lies."""
    if error.path == str(json_path):
        return error.problem
    return f"{error.path}: {error.problem}"


def write_problem_list(path, problems) -> None:
    """Write `file: problem` lines (e.g. skipped.txt) atomically."""
    text = "".join(f"{file}: {problem}\n" for file, problem in problems)
    images.write_bytes_atomic(path, text.encode("utf-8"))


def _prepare_labelme(data_dir, json_files, classes, cache, line_width, log, problems) -> list[Sample]:
    old = _read_index(cache, classes, line_width)
    entries: dict = {}
    samples: list[Sample] = []
    total = RasterStats()
    warnings: list[str] = []
    regenerated = 0
    seen: dict[str, Path] = {}
    for json_path in json_files:
        stem = sample_stem(json_path, data_dir)
        if stem in seen:
            raise DataError(json_path, f"its cache name {stem!r} is also that of {seen[stem]}; rename one")
        seen[stem] = json_path
        image_file = cache / IMAGES_FOLDER / f"{stem}.png"
        mask_files = [cache / name / f"{stem}.png" for name in classes]
        entry = old.get(stem)
        fresh = False
        try:
            json_print = _fingerprint(json_path)
            if not _still_valid(entry, json_print, [image_file, *mask_files]):
                entry = _generate_labelme(json_path, data_dir, classes, line_width, json_print, image_file, mask_files)
                regenerated += 1
                fresh = True
        except DataError as error:
            problems.append((json_path, file_problem(json_path, error)))
            continue
        entries[stem] = entry
        if fresh and regenerated % 50 == 0:  # keep finished work if interrupted
            _write_index(cache, classes, line_width, {**old, **entries}, data_dir)
        total = total + RasterStats.from_dict(entry["stats"])
        warnings.extend(entry.get("warnings", []))
        samples.append(Sample(stem=stem, image_path=image_file, mask_paths=mask_files, source=json_path,
                              spacing=_spacing(entry)))
    _remove_stale(cache, classes, old, entries)
    _write_index(cache, classes, line_width, entries, data_dir)
    outside = sum(1 for e in entries.values() if e.get("image_file") and not ann._is_inside(Path(e["image_file"]), data_dir))
    if samples:
        warnings.extend(empty_class_warnings(total, classes, len(samples)))
    _log_warnings(warnings, log)
    log(summary_line(len(samples), regenerated, total, cache, outside=outside, unusable=len(problems)))
    return samples


def empty_class_warnings(stats: RasterStats, classes, count: int) -> list[str]:
    """One line per class that has no pixel in any of the images."""
    return [f"class {name!r} has no pixels in any of the {count} images" for name in classes
            if not stats.pixels.get(name, 0)]


def _log_warnings(warnings, log) -> None:
    for line in warnings[:5]:
        log(f"warning: {line}")
    if len(warnings) > 5:
        log(f"warning: ... and {len(warnings) - 5} more warnings")


def _generate_labelme(json_path, data_dir, classes, line_width, json_print, image_file, mask_files) -> dict:
    annotation = ann.read_labelme(json_path, data_dir)
    image = ann.load_image(annotation)
    masks, stats = rasterize(annotation, classes, line_width)
    warnings = list(annotation.warnings)
    if image.dtype == np.float32:
        image = _float_to_uint16(image)
        warnings.append(f"{json_path}: floating-point image stored as 16-bit (linearly rescaled to min..max)")
    images.write_png(image_file, image)
    for index, path in enumerate(mask_files):
        images.write_png(path, masks[:, :, index] * np.uint8(255))
    external = annotation.image_data is None
    return {
        "source": json_path.relative_to(data_dir).as_posix(),
        "json": json_print,
        "image_file": str(annotation.image_path) if external else None,
        "image": _fingerprint(annotation.image_path) if external else None,
        "size": [annotation.height, annotation.width],
        "spacing": _spacing_entry(images.read_spacing(annotation.image_path if external else annotation.image_data)),
        "stats": stats.to_dict(),
        "warnings": warnings,
    }


def _prepare_image_masks(data_dir, classes, cache, log) -> list[Sample]:
    image_dir = data_dir / IMAGES_FOLDER if (data_dir / IMAGES_FOLDER).is_dir() else data_dir
    image_paths = sorted(p for p in image_dir.iterdir() if images.is_image_file(p))
    if not image_paths:
        suffixes = ", ".join(images.IMAGE_SUFFIXES)
        raise DataError(image_dir, f"no image files ({suffixes}, or DICOM) beside masks/")
    absent = [name for name in classes if not (data_dir / "masks" / name).is_dir()]
    if absent:
        found = sorted(p.name for p in (data_dir / "masks").iterdir() if p.is_dir())
        raise DataError(
            data_dir / "masks", f"no folder for class {', '.join(absent)}; the folders are: {', '.join(found) or 'none'}"
        )
    old = _read_index(cache, classes, 0)
    entries: dict = {}
    samples: list[Sample] = []
    total = RasterStats()
    regenerated, unlabelled, missing = 0, 0, 0
    seen: dict[str, Path] = {}
    for image_path in image_paths:
        stem = image_path.stem
        if stem in seen:
            raise DataError(image_path, f"has the same stem as {seen[stem].name}; masks could not tell them apart")
        seen[stem] = image_path
        user_masks = [data_dir / "masks" / name / f"{stem}.png" for name in classes]
        present = [p if p.is_file() else None for p in user_masks]
        if not any(present):
            unlabelled += 1
            continue
        prints = {
            "image": _fingerprint(image_path),
            "masks": [None if p is None else _fingerprint(p) for p in present],
        }
        entry = old.get(stem)
        if not (
            entry
            and entry.get("prints") == prints
            and all(Path(p).is_file() for p in [entry["image_path"], *entry["mask_paths"]])
        ):
            entry = _check_image_masks(image_path, present, classes, cache, stem, prints)
            regenerated += 1
        entries[stem] = entry
        missing += sum(p is None for p in present)
        total = total + RasterStats.from_dict(entry["stats"])
        samples.append(
            Sample(
                stem=stem,
                image_path=Path(entry["image_path"]),
                mask_paths=[Path(p) for p in entry["mask_paths"]],
                source=image_path,
                spacing=_spacing(entry),
            )
        )
    if not samples:
        raise DataError(data_dir / "masks", "no image has a mask for any of the classes " + ", ".join(classes))
    _remove_stale(cache, classes, old, entries)
    _write_index(cache, classes, 0, entries, data_dir)
    line = summary_line(len(samples), regenerated, total, cache)
    if unlabelled:
        line += f"; {unlabelled} images without any mask left out"
    if missing:
        line += f"; {missing} missing masks taken as empty"
    log(line)
    return samples


def _check_image_masks(image_path, present, classes, cache, stem, prints) -> dict:
    data = images.read_bytes(image_path)
    height, width = images.image_size(data, image_path)
    if images.is_gray_png(data):
        cached_image = image_path
    else:
        image = images.decode_image(data, image_path)
        if image.dtype == np.float32:
            image = _float_to_uint16(image)
        cached_image = cache / IMAGES_FOLDER / f"{stem}.png"
        images.write_png(cached_image, image)
    mask_paths, pixels = [], {}
    for name, path in zip(classes, present):
        if path is None:
            target = cache / name / f"{stem}.png"
            images.write_png(target, np.zeros((height, width), dtype=np.uint8))
            mask_paths.append(target)
            pixels[name] = 0
            continue
        raw = images.read_bytes(path)
        mask = images.decode_image(raw, path)
        if mask.shape != (height, width):
            raise DataError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}")
        on = mask > 0
        pixels[name] = int(np.count_nonzero(on))
        if images.is_gray_png(raw) and mask.dtype == np.uint8 and np.all((mask == 0) | (mask == 255)):
            mask_paths.append(path)
        else:
            target = cache / name / f"{stem}.png"
            images.write_png(target, on.astype(np.uint8) * np.uint8(255))
            mask_paths.append(target)
    return {
        "source": str(image_path),
        "prints": prints,
        "image_path": str(cached_image),
        "mask_paths": [str(p) for p in mask_paths],
        "spacing": _spacing_entry(images.read_spacing(image_path)),
        "stats": RasterStats(pixels=pixels).to_dict(),
    }


def summary_line(count: int, regenerated: int | None, stats: RasterStats, cache, outside: int = 0,
                 unusable: int = 0) -> str:
    """The one-line report of prepare_samples (and, with regenerated None, of the CLI)."""
    line = f"{count} annotations rasterised" if regenerated is None else f"{count} samples, {regenerated} regenerated"
    if cache is not None:
        line += f" (cache: {cache})"
    if unusable:
        line += f"; {unusable} unusable annotation files skipped"
    if outside:
        line += f"; {outside} images outside the data folder"
    if stats.skipped:
        named = ", ".join(f"{label} x{n}" for label, n in sorted(stats.skipped.items()))
        line += f"; skipped labels not in the class list: {named}"
    if stats.ignored_points:
        line += f"; {stats.ignored_points} point shapes ignored (no area)"
    if stats.clipped_points:
        line += f"; {stats.clipped_points} points outside the image clipped"
    return line


def _check_classes(classes) -> list[str]:
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    classes = [str(c) for c in classes or ()]
    if not classes:
        raise ConfigError("no classes given")
    for name in classes:
        if name in (".", "..", IMAGES_FOLDER) or name.startswith(".") or any(c in name for c in '/\\:*?"<>|\0'):
            raise ConfigError(f"class name {name!r} cannot be used as a folder name in the mask cache")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ConfigError(f"classes repeat a name: {', '.join(repeated)}")
    return classes


def _fingerprint(path) -> dict:
    path = Path(path)
    data = images.read_bytes(path)
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest()}


def _same(a, b) -> bool:
    """Same content: size and hash agree (a new mtime alone, e.g. after `touch`, is not a change)."""
    return bool(a) and bool(b) and a.get("size") == b.get("size") and a.get("sha256") == b.get("sha256")


def _still_valid(entry, json_print, files) -> bool:
    if not entry or not _same(entry.get("json"), json_print):
        return False
    if not all(path.is_file() for path in files):
        return False
    if entry.get("image_file"):
        image_file = Path(entry["image_file"])
        if not image_file.is_file() or not _same(entry.get("image"), _fingerprint(image_file)):
            return False
    return True


def _read_index(cache: Path, classes, line_width) -> dict:
    try:
        index = json.loads((cache / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        return {}
    if index.get("classes") != list(classes) or index.get("line_width") != line_width:
        return {}
    entries = index.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_index(cache: Path, classes, line_width, entries: dict, data_dir) -> None:
    index = {
        "format": CACHE_FORMAT,
        "data_dir": str(data_dir),
        "classes": list(classes),
        "line_width": line_width,
        "entries": entries,
    }
    images.write_bytes_atomic(cache / INDEX_NAME, json.dumps(index, indent=1).encode("utf-8"))


def _remove_stale(cache: Path, classes, old: dict, entries: dict) -> None:
    for stem in set(old) - set(entries):
        for folder in [IMAGES_FOLDER, *classes]:
            (cache / folder / f"{stem}.png").unlink(missing_ok=True)


def _spacing_entry(spacing) -> list[float] | None:
    return None if spacing is None else [float(v) for v in spacing]


def _spacing(entry: dict) -> tuple[float, float] | None:
    """A cache entry's pixel spacing (row, column) in mm, None when its image has none (or an older cache)."""
    value = entry.get("spacing")
    return (float(value[0]), float(value[1])) if isinstance(value, list) and len(value) == 2 else None


def _float_to_uint16(image: np.ndarray) -> np.ndarray:
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint16)
    low, high = float(image[finite].min()), float(image[finite].max())
    scaled = (np.where(finite, image, low) - low) / ((high - low) or 1.0)
    return np.round(scaled * 65535).astype(np.uint16)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(folder)))
    except (OSError, ValueError):
        return False


# -- command line --------------------------------------------------------------------------------------


def write_masks(data_dir, classes, out, line_width: int = 3, log=print, skip_bad: bool = False) -> RasterStats:
    """Rasterise every Labelme JSON under data_dir into out/<class>/<image stem>.png (0/255); bad files raise unless skip_bad."""
    data_dir = Path(os.path.abspath(Path(data_dir).expanduser()))
    out = Path(os.path.abspath(Path(out).expanduser()))
    if os.path.realpath(out) == os.path.realpath(data_dir):
        raise ConfigError(f"--out {out} is the data folder itself; write the masks somewhere else")
    classes = _check_classes(classes)
    if line_width < 1:
        raise ConfigError(f"--line-width must be at least 1, not {line_width}")
    json_files = ann.find_annotations(data_dir)
    log = log or (lambda line: None)
    good, problems = _read_all(json_files, data_dir)
    if problems and not skip_bad:
        raise bad_files_error(data_dir, problems, len(json_files))
    if not good:
        raise DataError(data_dir, f"none of the {len(json_files)} annotation files can be used")
    total, warnings, names = RasterStats(), [], {}
    for annotation in good:
        name = _output_name(annotation, data_dir)
        if name in names:
            raise DataError(annotation.json_path, f"its mask name {name!r} is also that of {names[name]}; rename one")
        names[name] = annotation.json_path
        masks, stats = rasterize(annotation, classes, line_width)
        for index, class_name in enumerate(classes):
            images.write_png(out / class_name / f"{name}.png", masks[:, :, index] * np.uint8(255))
        total = total + stats
        warnings.extend(annotation.warnings)
    if problems:
        write_problem_list(out / "skipped.txt", problems)
    _log_warnings(warnings + empty_class_warnings(total, classes, len(good)), log)
    outside = sum(a.outside_data_dir for a in good)
    line = summary_line(len(good), None, total, None, outside=outside, unusable=len(problems))
    log(line + f"; masks written to {out}" + (f" (list of skipped files: {out / 'skipped.txt'})" if problems else ""))
    return total


def _read_all(json_files, data_dir) -> tuple[list, list]:
    """(annotations that can be used, [(json path, problem)] for those that cannot)."""
    good, problems = [], []
    for json_path in json_files:
        try:
            annotation = ann.read_labelme(json_path, data_dir)
            ann.load_image(annotation)  # decoded in full: a truncated or corrupt image is found here
        except DataError as error:
            problems.append((json_path, file_problem(json_path, error)))
            continue
        good.append(annotation)
    return good, problems


def _output_name(annotation: ann.Annotation, data_dir: Path) -> str:
    """The image's stem (the JSON's when the image is embedded), prefixed by the JSON's subfolders."""
    relative = annotation.json_path.relative_to(data_dir)
    stem = annotation.image_path.stem if annotation.image_path is not None else relative.stem
    return "__".join([*relative.parent.parts, stem])


def main(argv=None) -> int:
    """`python -m keras_unet.masks DATA_DIR --classes a,b --out OUT [--line-width 3] [--skip-bad]`."""
    return run_main(_main, argv)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_unet.masks",
        description="Rasterise Labelme annotations into one 0/255 PNG mask per class and image.",
    )
    parser.add_argument("data_dir", help="folder of Labelme .json files (searched recursively)")
    parser.add_argument("--classes", default="", help="comma-separated class names (default: labels.txt, "
                                                      "else every label found)")
    parser.add_argument("--out", required=True, help="output folder: OUT/<class>/<image stem>.png")
    parser.add_argument("--line-width", type=int, default=3, help="pixel width of line and linestrip shapes")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unusable annotation files (listed in OUT/skipped.txt) instead of stopping")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    classes = ann.resolve_classes(args.classes, args.data_dir)
    write_masks(args.data_dir, classes, args.out, args.line_width, skip_bad=args.skip_bad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
