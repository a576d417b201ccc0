"""Find the samples of a data folder (Labelme JSON files, or images with masks/<class>/ folders), rasterise and cache
their masks, resolve the class list and split them into training and validation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_unet.classes import check_folder_names, parse_classes, read_class_list
from keras_unet.config import Config
from keras_unet.data import cache as cache_index
from keras_unet.data.cache import IMAGES_FOLDER, cache_folder
from keras_unet.data.rasterize import RasterStats, rasterize
from keras_unet.errors import ConfigError, DataError
from keras_unet.io import images, labelme
from keras_unet.io.files import is_inside, read_bytes, write_bytes_atomic

@dataclass
class Sample:
    """One training example on disk: a single-channel PNG image and one 0/255 PNG mask per class."""

    stem: str
    image_path: Path  # a DICOM source is converted once into a 16-bit PNG in the cache
    mask_paths: list[Path]
    source: Path  # the Labelme JSON, or the user's image file in an image + mask folder
    spacing: tuple[float, float] | None = None  # (row, column) mm per pixel, from a DICOM source's header


# -- rasterising --------------------------------------------------------------------------------------


# -- the cache ----------------------------------------------------------------------------------------


def sample_stem(json_path, data_dir) -> str:
    """A file's path relative to data_dir without its suffix, with '/' replaced by '__'."""
    relative = Path(json_path).relative_to(data_dir).with_suffix("")
    return "__".join(relative.parts)


def prepare_samples(data_dir, classes, cache_dir=None, line_width: int = 10, log=print, skip_bad: bool = False,
                    bad: list | None = None, require_pixels: bool = False) -> list[Sample]:
    """Samples for a Labelme folder (masks cached) or an image + masks/ folder.

    Bad files raise, or with skip_bad are left out and appended to `bad`; require_pixels: a class with no pixel
    in any image is an error (for training) rather than a warning."""
    data_dir = Path(os.path.abspath(Path(data_dir).expanduser()))
    if not data_dir.is_dir():
        raise DataError(data_dir, "folder not found" if not data_dir.exists() else "not a folder")
    classes = check_folder_names(classes, reserved=(IMAGES_FOLDER,))
    if line_width < 1:
        raise ConfigError(f"line_width must be at least 1, not {line_width}")
    cache = cache_folder(data_dir, classes, line_width, cache_dir)
    if is_inside(cache, data_dir):
        raise ConfigError(
            f"the cache folder {cache} is inside the data folder {data_dir}; "
            "choose a cache folder elsewhere (cache_dir or $KERAS_UNET_CACHE)"
        )
    try:
        json_files = labelme.find_annotations(data_dir)
    except DataError:
        json_files = []
    log = log or (lambda line: None)
    if json_files:
        problems: list[tuple[Path, str]] = []
        with cache_index.filling(cache, log):  # one process at a time fills a cache folder
            samples, stats = _prepare_labelme(data_dir, json_files, classes, cache, line_width, log, problems)
        if problems and not skip_bad:
            raise bad_files_error(data_dir, problems, len(json_files))
        if bad is not None:
            bad.extend(problems)
        if not samples:
            raise DataError(data_dir, f"none of the {len(json_files)} annotation files can be used")
    elif (data_dir / "masks").is_dir():
        with cache_index.filling(cache, log):
            samples, stats = _prepare_image_masks(data_dir, classes, cache, log)
    else:
        raise DataError(data_dir, "no Labelme .json files, and no masks/<class>/<stem>.png files beside images")
    if require_pixels:
        check_pixels(data_dir, stats, classes, len(samples))
    return samples


def check_pixels(data_dir, stats: RasterStats, classes, count: int) -> None:
    """Raise DataError when a class has no pixel in any image, naming the labels that do occur."""
    empty = [name for name in classes if not stats.pixels.get(name, 0)]
    if not empty:
        return
    found = [f"{name} ({stats.pixels[name]:,} px)" for name in classes if stats.pixels.get(name, 0)]
    found += [f"{label} x{n} shapes" for label, n in sorted(stats.skipped.items())]
    listed = ", ".join(found) if found else "none"
    raise DataError(data_dir, f"class(es) {', '.join(empty)} have no pixels in any of the {count} images, so "
                              f"nothing can be learnt for them; check --classes. Labels found: {listed}")


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
    write_bytes_atomic(path, text.encode("utf-8"))


def _prepare_labelme(data_dir, json_files, classes, cache, line_width, log, problems) -> tuple[list, RasterStats]:
    old = cache_index.read_index(cache, classes, line_width)
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
            json_print = cache_index.fingerprint(json_path)
            if not cache_index.still_valid(entry, json_print, [image_file, *mask_files]):
                entry = _generate_labelme(json_path, data_dir, classes, line_width, json_print, image_file, mask_files)
                regenerated += 1
                fresh = True
        except DataError as error:
            problems.append((json_path, file_problem(json_path, error)))
            continue
        entries[stem] = entry
        if fresh and regenerated % 50 == 0:  # keep finished work if interrupted
            cache_index.write_index(cache, classes, line_width, {**old, **entries}, data_dir)
        total = total + RasterStats.from_dict(entry["stats"])
        warnings.extend(entry.get("warnings", []))
        samples.append(Sample(stem=stem, image_path=image_file, mask_paths=mask_files, source=json_path,
                              spacing=cache_index.entry_spacing(entry)))
    cache_index.remove_stale(cache, classes, old, entries)
    cache_index.write_index(cache, classes, line_width, entries, data_dir)
    outside = sum(1 for e in entries.values() if e.get("image_file") and not is_inside(Path(e["image_file"]), data_dir))
    if samples:
        warnings.extend(empty_class_warnings(total, classes, len(samples)))
    log_warnings(warnings, log)
    log(summary_line(len(samples), regenerated, total, cache, outside=outside, unusable=len(problems)))
    return samples, total


def empty_class_warnings(stats: RasterStats, classes, count: int) -> list[str]:
    """One line per class that has no pixel in any of the images."""
    return [f"class {name!r} has no pixels in any of the {count} images" for name in classes
            if not stats.pixels.get(name, 0)]


def log_warnings(warnings, log) -> None:
    """Log the first five warnings and how many more there are."""
    for line in warnings[:5]:
        log(f"warning: {line}")
    if len(warnings) > 5:
        log(f"warning: ... and {len(warnings) - 5} more warnings")


def _generate_labelme(json_path, data_dir, classes, line_width, json_print, image_file, mask_files) -> dict:
    annotation = labelme.read_labelme(json_path, data_dir)
    image = labelme.load_image(annotation)
    masks, stats = rasterize(annotation, classes, line_width)
    warnings = list(annotation.warnings)
    if image.dtype == np.float32:
        image = images.float_to_uint16(image)
        warnings.append(f"{json_path}: floating-point image stored as 16-bit (linearly rescaled to min..max)")
    images.write_png(image_file, image)
    for index, path in enumerate(mask_files):
        images.write_png(path, masks[:, :, index] * np.uint8(255))
    external = annotation.image_data is None
    return {
        "source": json_path.relative_to(data_dir).as_posix(),
        "json": json_print,
        "image_file": str(annotation.image_path) if external else None,
        "image": cache_index.fingerprint(annotation.image_path) if external else None,
        "size": [annotation.height, annotation.width],
        "spacing": cache_index.spacing_entry(images.read_spacing(annotation.image_path if external else annotation.image_data)),
        "stats": stats.to_dict(),
        "warnings": warnings,
    }


def _prepare_image_masks(data_dir, classes, cache, log) -> tuple[list, RasterStats]:
    image_dir = data_dir / IMAGES_FOLDER if (data_dir / IMAGES_FOLDER).is_dir() else data_dir
    image_paths = images.list_images(image_dir, purpose="beside masks/")
    absent = [name for name in classes if not (data_dir / "masks" / name).is_dir()]
    if absent:
        found = sorted(p.name for p in (data_dir / "masks").iterdir() if p.is_dir())
        raise DataError(
            data_dir / "masks", f"no folder for class {', '.join(absent)}; the folders are: {', '.join(found) or 'none'}"
        )
    old = cache_index.read_index(cache, classes, 0)
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
            "image": cache_index.fingerprint(image_path),
            "masks": [None if p is None else cache_index.fingerprint(p) for p in present],
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
                spacing=cache_index.entry_spacing(entry),
            )
        )
    if not samples:
        raise DataError(data_dir / "masks", "no image has a mask for any of the classes " + ", ".join(classes))
    cache_index.remove_stale(cache, classes, old, entries)
    cache_index.write_index(cache, classes, 0, entries, data_dir)
    line = summary_line(len(samples), regenerated, total, cache)
    if unlabelled:
        line += f"; {unlabelled} images without any mask left out"
    if missing:
        line += f"; {missing} missing masks taken as empty"
    log(line)
    return samples, total


def _check_image_masks(image_path, present, classes, cache, stem, prints) -> dict:
    data = read_bytes(image_path)
    height, width = images.image_dimensions(data, image_path)
    if images.is_gray_png(data):
        cached_image = image_path
    else:
        image = images.decode_image(data, image_path)
        if image.dtype == np.float32:
            image = images.float_to_uint16(image)
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
        raw = read_bytes(path)
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
        "spacing": cache_index.spacing_entry(images.read_spacing(image_path)),
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


def resolve_classes(classes, data_dir) -> list[str]:
    """The class list: given explicitly (list or 'a,b'), else data_dir/labels.txt, else every label found."""
    explicit = parse_classes(classes)
    if explicit:
        return explicit
    data_dir = Path(data_dir)
    labels_txt = data_dir / "labels.txt"
    if labels_txt.is_file():
        return read_class_list(labels_txt)
    if not data_dir.is_dir():
        raise DataError(data_dir, "folder not found")
    json_files = labelme.walk_json(data_dir)
    if json_files:
        found, errors = labelme.labels_found(json_files)
        if not found and errors:
            raise errors[0]
        if not found:
            raise DataError(data_dir, "the annotations hold no labelled shapes: cannot infer the classes")
        return sorted(found)
    masks = data_dir / "masks"
    if masks.is_dir():
        found = sorted(p.name for p in masks.iterdir() if p.is_dir() and not p.name.startswith("."))
        if found:
            return found
    raise DataError(data_dir, "no labels.txt, no Labelme .json files and no masks/<class>/ folders: no classes")


def split_samples(samples, val_fraction: float, seed: int):
    """Deterministic (train, val) split of a sample list: a seeded shuffle, at least one image on each side."""
    samples = sorted(samples, key=lambda s: s.stem)
    if len(samples) < 2:
        return samples, samples
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, int(round(len(samples) * val_fraction))))
    val = sorted((samples[i] for i in order[:n_val]), key=lambda s: s.stem)
    train = sorted((samples[i] for i in order[n_val:]), key=lambda s: s.stem)
    return train, val


def load_samples(config: Config, log=print, bad: list | None = None, require_pixels: bool = False):
    """Training and validation samples: train/ and val/ subfolders when present, else a seeded split.

    require_pixels: every class must have pixels in the training images (else DataError, before any training)."""
    data = Path(config.data)
    kwargs = dict(classes=config.classes, cache_dir=config.cache_dir or None, line_width=config.line_width, log=log,
                  skip_bad=config.skip_bad, bad=bad)
    if (data / "train").is_dir() and (data / "val").is_dir():
        return (prepare_samples(data / "train", require_pixels=require_pixels, **kwargs),
                prepare_samples(data / "val", **kwargs))
    return split_samples(prepare_samples(data, require_pixels=require_pixels, **kwargs), config.val_fraction,
                         config.seed)
