"""Self-training: a teacher model's cleaned masks for unlabelled images, written as an image + masks/ folder.

The folder (RUN/pseudo) holds a byte-for-byte copy of each unlabelled image in images/ and the teacher's masks in
masks/<class>/<stem>.png, the layout `data.samples.prepare_samples` reads, so pseudo-labelled images enter training
exactly as hand-labelled ones do. numpy and OpenCV only; the teacher is any `infer.predictor.Predictor`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_unet.errors import DataError
from keras_unet.io import images
from keras_unet.io.files import read_bytes, write_bytes_atomic, write_json_atomic

DONE_FILE = "finished.txt"  # JSON inside; not .json, which would pass for a Labelme file


def pseudo_name(path, root) -> str:
    """A file name for the copy of root/.../path that no other image under root shares (folders joined by '__')."""
    relative = Path(path).relative_to(root)
    return "__".join(relative.parts)


def pseudo_labelled(folder) -> dict | None:
    """The summary of a finished pseudo-label folder (its finished.txt), else None."""
    done = Path(folder) / DONE_FILE
    return json.loads(done.read_text()) if done.is_file() else None


def pseudo_label(predictor, paths, root, folder, log=print) -> dict:
    """Write each image under root (copied as is) and the predictor's cleaned masks for it into folder.

    Unreadable images are left out with a warning. A finished folder (finished.txt) is reused; returns its summary."""
    folder = Path(folder)
    finished = pseudo_labelled(folder)
    if finished is not None:
        return finished
    written, skipped, stems = 0, [], {}
    for path in paths:
        name = pseudo_name(path, root)
        stem = Path(name).stem
        if stem in stems:
            skipped.append(str(path))
            log(f"warning: {path}: same name as {stems[stem]} but for the suffix (no pseudo-label)")
            continue
        stems[stem] = path
        try:
            data = read_bytes(path)
            image = images.decode_image(data, path)
        except DataError as error:
            skipped.append(str(path))
            log(f"warning: {path}: {error.problem} (no pseudo-label)")
            continue
        _, masks = predictor.segment(image)
        for c, cls in enumerate(predictor.classes):
            images.write_png(folder / "masks" / cls / f"{stem}.png", masks[..., c] * np.uint8(255))
        write_bytes_atomic(folder / "images" / name, data)  # last: an image in images/ has all its masks
        written += 1
    summary = {"images": written, "skipped": skipped, "teacher": predictor.source}
    write_json_atomic(folder / DONE_FILE, summary)
    return summary
