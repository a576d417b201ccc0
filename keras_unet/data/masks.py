"""The masks command's work: every Labelme file of a folder rasterised into OUT/<class>/<image stem>.png (0/255)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keras_unet.classes import check_folder_names
from keras_unet.data.rasterize import RasterStats, rasterize
from keras_unet.data.samples import (
    bad_files_error, empty_class_warnings, file_problem, log_warnings, summary_line, write_problem_list)
from keras_unet.errors import ConfigError, DataError
from keras_unet.io import images, labelme
from keras_unet.run_folder import SKIPPED_FILE

def write_masks(data_dir, classes, out, line_width: int = 10, log=print, skip_bad: bool = False) -> RasterStats:
    """Rasterise every Labelme JSON under data_dir into out/<class>/<image stem>.png (0/255); bad files raise unless skip_bad."""
    data_dir = Path(os.path.abspath(Path(data_dir).expanduser()))
    out = Path(os.path.abspath(Path(out).expanduser()))
    if os.path.realpath(out) == os.path.realpath(data_dir):
        raise ConfigError(f"--out {out} is the data folder itself; write the masks somewhere else")
    classes = check_folder_names(classes)
    if line_width < 1:
        raise ConfigError(f"--line-width must be at least 1, not {line_width}")
    json_files = labelme.find_annotations(data_dir)
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
        write_problem_list(out / SKIPPED_FILE, problems)
    log_warnings(warnings + empty_class_warnings(total, classes, len(good)), log)
    outside = sum(a.outside_data_dir for a in good)
    line = summary_line(len(good), None, total, None, outside=outside, unusable=len(problems))
    log(line + f"; masks written to {out}" + (f" (list of skipped files: {out / SKIPPED_FILE})" if problems else ""))
    return total


def _read_all(json_files, data_dir) -> tuple[list, list]:
    """(annotations that can be used, [(json path, problem)] for those that cannot)."""
    good, problems = [], []
    for json_path in json_files:
        try:
            annotation = labelme.read_labelme(json_path, data_dir)
            labelme.load_image(annotation)  # decoded in full: a truncated or corrupt image is found here
        except DataError as error:
            problems.append((json_path, file_problem(json_path, error)))
            continue
        good.append(annotation)
    return good, problems


def _output_name(annotation: labelme.Annotation, data_dir: Path) -> str:
    """The image's stem (the JSON's when the image is embedded), prefixed by the JSON's subfolders."""
    relative = annotation.json_path.relative_to(data_dir)
    stem = annotation.image_path.stem if annotation.image_path is not None else relative.stem
    return "__".join([*relative.parent.parts, stem])
