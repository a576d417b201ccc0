"""Square crops around one structure, for the refine stage: find the box, cut it out, put its result back.

A box is (top, left, side) in pixels of the original image: a square that may reach past the image border,
where the crop is zero-padded. numpy and OpenCV only; `data.py` cuts the same crops with TensorFlow ops.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def largest_component_bounds(mask) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), ends exclusive, of the largest 8-connected component of a 2-D mask; None when empty."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    count, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[k, :4])
    return y, x, y + h, x + w


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
