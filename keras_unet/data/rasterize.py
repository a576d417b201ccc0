"""Rasterise parsed Labelme shapes into per-class masks: pure functions from an Annotation to arrays (numpy + OpenCV).

Pixel convention (Labelme's, and that of masks traced into polygons): integer coordinates are pixel
centres and a shape's outline pixels belong to it, so a polygon traced through the boundary pixels of
a mask fills that mask back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from keras_unet.io.labelme import Annotation, Shape

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


def rasterize(annotation: Annotation, classes, line_width: int = 3) -> tuple[np.ndarray, RasterStats]:
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


def draw_shape(plane: np.ndarray, shape: Shape, line_width: int = 3) -> None:
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


def _paste_mask(plane: np.ndarray, shape: Shape) -> None:
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
