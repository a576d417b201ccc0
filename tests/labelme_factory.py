"""Small builders for synthetic Labelme files and images, shared by the data tests."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np


def png_bytes(array: np.ndarray) -> bytes:
    """PNG-encoded bytes of an array."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    assert ok
    return encoded.tobytes()


def gradient(height: int = 20, width: int = 30, dtype=np.uint8) -> np.ndarray:
    """A deterministic grayscale test picture."""
    top = 255 if dtype == np.uint8 else 65535
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 7 + y * 13) % (top + 1)).astype(dtype)


def shape(label: str, points, shape_type: str = "polygon", **extra) -> dict:
    """A Labelme shape dict."""
    return {
        "label": label,
        "points": [list(point) for point in points],
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": None,
        **extra,
    }


def document(shapes, image_path="img.png", height=20, width=30, image_data: bytes | None = None, **extra) -> dict:
    """A Labelme 5 document dict."""
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": list(shapes),
        "imagePath": image_path,
        "imageData": None if image_data is None else base64.b64encode(image_data).decode("ascii"),
        "imageHeight": height,
        "imageWidth": width,
        **extra,
    }


def write_json(path, content) -> Path:
    """Write a dict (or raw text) as a JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def write_image(path, array: np.ndarray) -> Path:
    """Write an image file in the format its suffix names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(array))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def labelme_pair(folder, name: str, shapes, height=20, width=30, image=None) -> Path:
    """Write name.png and name.json (imagePath beside it) into folder; returns the JSON's path."""
    folder = Path(folder)
    write_image(folder / f"{name}.png", gradient(height, width) if image is None else image)
    return write_json(folder / f"{name}.json", document(shapes, f"{name}.png", height, width))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (nonzero = foreground)."""
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


SMALL_SHAPES = [shape("rib", [[1, 1], [10, 1], [10, 10], [1, 10]]), shape("heart", [[0, 0], [5, 5]], "rectangle")]


def small_dataset(data) -> Path:
    """data/a.json and data/sub/b.json (with a clavicle too) over SMALL_SHAPES: the shared little Labelme folder."""
    data = Path(data)
    labelme_pair(data, "a", SMALL_SHAPES)
    labelme_pair(data / "sub", "b", SMALL_SHAPES + [shape("clavicle", [[20, 2], [25, 2], [25, 8]])])
    return data


LABELME7_VERSION = "7.9.1"

def sample_copy(folder, count=6) -> Path:
    """A new folder holding the first count Labelme files of the bundled sample, their images and labels.txt."""
    from conftest import SAMPLE_DIR

    folder = Path(folder)
    folder.mkdir()
    for json_path in sorted(SAMPLE_DIR.glob("*.json"))[:count]:
        shutil.copy(json_path, folder)
        shutil.copy(json_path.with_suffix(".png"), folder)
    shutil.copy(SAMPLE_DIR / "labels.txt", folder)
    return folder



def labelme7_shape(label: str, points, shape_type: str, mask: np.ndarray | None = None, locked: bool = False) -> dict:
    """A shape dict as Labelme 7 writes it (`locked` only when set, `mask` a base64 PNG for mask shapes)."""
    raw = shape(label, points, shape_type)
    if mask is not None:
        raw["mask"] = base64.b64encode(png_bytes(np.asarray(mask, np.uint8))).decode("ascii")
    if locked:
        raw["locked"] = True
    return raw


def oriented_box(centre, size, degrees: float) -> list:
    """The four corners of a rotated rectangle, in drawing order, as Labelme 7's oriented_rectangle stores them."""
    (cx, cy), (w, h) = centre, size
    a = np.radians(degrees)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (corners @ rotation.T + (cx, cy)).tolist()


def every_shape_shapes(rng, height: int, width: int) -> list:
    """One shape of every type Labelme 7 draws, at random fractional positions (some locked)."""
    def point():
        return [float(rng.uniform(2, width - 2)), float(rng.uniform(2, height - 2))]

    centre = point()
    patch = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9)))) > 0.4
    x0, y0 = float(rng.uniform(0, width - 10)), float(rng.uniform(0, height - 10))
    corner = [x0, y0], [x0 + patch.shape[1] - 1, y0 + patch.shape[0] - 1]  # fractional bounds, as a drag leaves them
    whole = rng.random((4, 5)) > 0.5
    xi, yi = int(rng.integers(0, width - 6)), int(rng.integers(0, height - 5))
    return [
        labelme7_shape("a", [point() for _ in range(int(rng.integers(3, 9)))], "polygon"),
        labelme7_shape("a", [point(), point()], "rectangle", locked=True),
        labelme7_shape("a", oriented_box(centre, (rng.uniform(4, 14), rng.uniform(3, 9)), rng.uniform(0, 180)),
                       "oriented_rectangle"),
        labelme7_shape("a", [centre, [centre[0] + float(rng.uniform(1, 6)), centre[1] + float(rng.uniform(-3, 3))]],
                       "circle"),
        labelme7_shape("a", [point(), point()], "line"),
        labelme7_shape("a", [point() for _ in range(int(rng.integers(3, 6)))], "linestrip"),
        labelme7_shape("a", [point()], "point"),
        labelme7_shape("a", [list(c) for c in corner], "mask", mask=patch),
        labelme7_shape("a", [[xi, yi], [xi + 4, yi + 3]], "mask", mask=whole),
    ]


def labelme7_folder(folder, files: int = 6, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    """A folder of Labelme 7 files (7.9.1 layout) holding every shape type, each beside its 8-bit PNG."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for k in range(files):
        name = f"l7_{k:02d}"
        write_image(folder / f"{name}.png", gradient(height, width))
        doc = document(every_shape_shapes(rng, height, width), f"{name}.png", height, width)
        doc["version"] = LABELME7_VERSION
        write_json(folder / f"{name}.json", doc)
    return folder


def _labelme_major(python: str) -> int:
    try:
        probe = subprocess.run([python, "-c", "import labelme, PIL; print(labelme.__version__)"],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    first = probe.stdout.strip().splitlines()[-1:] if probe.returncode == 0 else []
    return int(first[0].split(".")[0]) if first and first[0].split(".")[0].isdigit() else 0


def find_labelme_python(major: int = 5) -> str | None:
    """$KERAS_UNET_LABELME_PYTHON, else python3.12 or the CI's /tmp/lm7 venv, if it imports Labelme `major` or later."""
    named = os.environ.get("KERAS_UNET_LABELME_PYTHON", "").strip()
    candidates = [named] if named else [shutil.which("python3.12") or "", "/tmp/lm7/bin/python"]
    return next((c for c in candidates if c and os.path.exists(c) and _labelme_major(c) >= major), None)
