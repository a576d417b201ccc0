"""Small builders for synthetic Labelme files and images, shared by the data tests."""

from __future__ import annotations

import base64
import json
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
