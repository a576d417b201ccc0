"""Square crops around one structure, for the refine stage: find the box, cut it out, put its result back.

A box is (top, left, side) in pixels of the original image: a square that may reach past the image border,
where the crop is zero-padded. numpy and OpenCV only; `data.py` cuts the same crops with TensorFlow ops.

A class of one structure (a clavicle) gets one box, around its largest component; a class of several
(`structure_boxes` with per_component: both lungs in one channel, the ribs of each side) one box per component of
at least min_area pixels, and `paste_all` puts their results back, the mean (or max) where boxes overlap.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from keras_unet.imaging.postprocess import component_stats


def component_bounds(mask, min_area: int = 0) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1), ends exclusive, of every 8-connected component of at least min_area pixels, largest
    first (ties in raster order)."""
    stats = component_stats(mask)
    order = np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")
    found = []
    for k in order:
        x, y, w, h, area = (int(v) for v in stats[k, :5])
        if area >= max(1, min_area):
            found.append((y, x, y + h, x + w))
    return found


def largest_component_bounds(mask) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), ends exclusive, of the largest 8-connected component of a 2-D mask; None when empty."""
    found = component_bounds(mask)
    return found[0] if found else None


def square_box(bounds, margin: float) -> tuple[int, int, int]:
    """(top, left, side): the square centred on bounds whose side is their longer side times (1 + 2 margin)."""
    y0, x0, y1, x1 = bounds
    side = max(1, math.ceil(max(y1 - y0, x1 - x0) * (1.0 + 2.0 * margin)))
    top = int(math.floor((y0 + y1 - side) / 2.0))
    left = int(math.floor((x0 + x1 - side) / 2.0))
    return top, left, side


def structure_box(mask, margin: float) -> tuple[int, int, int] | None:
    """The crop box around the largest component of a 2-D mask, or None when the mask is empty."""
    bounds = largest_component_bounds(mask)
    return None if bounds is None else square_box(bounds, margin)


def structure_boxes(mask, margin: float, per_component: bool = False, min_area: int = 0) -> list:
    """The crop boxes of a 2-D mask: around its largest component, or one per component of at least min_area
    pixels (largest first); [] when there is none."""
    if not per_component:
        box = structure_box(mask, margin)
        return [] if box is None else [box]
    return [square_box(bounds, margin) for bounds in component_bounds(mask, min_area)]


def _overlap(box, height: int, width: int):
    """(rows, columns) of the image inside the box, and where they sit in the crop, as slices."""
    top, left, side = box
    y0, y1 = max(top, 0), min(top + side, height)
    x0, x1 = max(left, 0), min(left + side, width)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"box {box} lies outside the {height}x{width} image")
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def crop(image, box) -> np.ndarray:
    """The (side, side, ...) square of the image under the box, zero where it reaches past the border."""
    a = np.asarray(image)
    top, left, side = box
    inside, at = _overlap(box, a.shape[0], a.shape[1])
    out = np.zeros((side, side, *a.shape[2:]), dtype=a.dtype)
    out[at] = a[inside]
    return out


def paste(plane: np.ndarray, patch: np.ndarray, box) -> np.ndarray:
    """Write the part of a (side, side) patch that lies inside the image into a copy of the 2-D plane."""
    out = np.array(plane, copy=True)
    inside, at = _overlap(box, out.shape[0], out.shape[1])
    out[inside] = patch[at]
    return out


OVERLAPS = ("mean", "max")


def paste_all(plane: np.ndarray, patches, boxes, overlap: str = "mean") -> np.ndarray:
    """A copy of the 2-D plane with each (side, side) patch written under its box: where boxes overlap, the mean
    or the max of their patches; outside every box, the plane as it was."""
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAPS)}, got {overlap!r}")
    out = np.array(plane, dtype=np.float32, copy=True)
    total = np.zeros_like(out) if overlap == "mean" else np.full_like(out, -np.inf)
    count = np.zeros(out.shape, dtype=np.int32)
    for patch, box in zip(patches, boxes):
        inside, at = _overlap(box, out.shape[0], out.shape[1])
        piece = np.asarray(patch, dtype=np.float32)[at]
        total[inside] = total[inside] + piece if overlap == "mean" else np.maximum(total[inside], piece)
        count[inside] += 1
    covered = count > 0
    out[covered] = total[covered] / count[covered] if overlap == "mean" else total[covered]
    return out
