"""Rasterise parsed Labelme shapes into per-class masks: pure functions from an Annotation to arrays.

Pixel convention (Labelme's, so a mask made here is the one Labelme's own conversion makes): pixel i spans the
coordinates i .. i + 1, so its centre is at i + 0.5, and a vertex at x lies in pixel floor(x). Outlines are drawn
by Pillow's ImageDraw, as Labelme's `shape_to_mask` draws them: vertices go to whole pixels by C truncation
(floor(x) for x >= 0; a vertex between -1 and 0 counts as pixel 0), and a filled shape keeps its outline pixels.

- polygon, oriented_rectangle: the filled polygon through those pixels (even-odd fill).
- rectangle: every pixel from the truncated low corner to the truncated high corner, both included.
- circle: the disc that fills the pixel box trunc(c - r) .. trunc(c + r), r being the centre-to-edge distance.
- line, linestrip: segments `line_width` pixels wide (Labelme's conversion: 10) with flat ends; a linestrip's
  inner joints are rounded (Pillow's joint="curve", as Labelme 7 draws them).
- mask: the stored 0/1 patch pasted with its top-left pixel at round(points[0]) (numpy rounding, half to even);
  integer bounds crop the patch to the box they name, fractional bounds keep the patch's own size.
- point, points: no area; not drawn (Labelme's conversion would paint an 11-pixel disc; counted in the stats).

Shapes reaching farther than FAR pixels beyond the image are first cut to a box around it (no drawing routine
gets coordinates that could overflow); circles of radius above MAX_RADIUS are filled by their pixel centres.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from keras_unet.io.labelme import Annotation, Shape

LABELME_LINE_WIDTH = 10  # pixels: the width Labelme's own conversion (shape_to_mask) draws lines at


FAR = 1 << 20  # pixels beyond the image from which shapes are cut before drawing


MAX_RADIUS = 1 << 16  # pixels; larger circles are filled by their pixel centres (Pillow walks the whole rim)


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


def rasterize(annotation: Annotation, classes, line_width: int = LABELME_LINE_WIDTH) -> tuple[np.ndarray, RasterStats]:
    """(H, W, C) uint8 0/1 masks, one channel per class (shapes fill only their own class), and stats."""
    classes = list(classes)
    if line_width < 1:
        raise ValueError(f"line_width must be at least 1, not {line_width}")
    height, width = annotation.height, annotation.width
    channel = {name: index for index, name in enumerate(classes)}
    planes = [np.zeros((height, width), dtype=np.uint8) for _ in classes]
    canvases: dict[int, Image.Image] = {}  # one Pillow image per class for everything Pillow draws
    stats = RasterStats()
    for shape in annotation.shapes:
        if shape.label not in channel:
            stats.skipped[shape.label] += 1
            continue
        if shape.shape_type in ("point", "points"):
            stats.ignored_points += 1
            continue
        stats.clipped_points += count_outside(shape.points, height, width)
        index = channel[shape.label]
        if _drawn_by_pillow(shape):
            if index not in canvases:
                canvases[index] = Image.new("L", (width, height), 0)
            _draw(ImageDraw.Draw(canvases[index]), (height, width), shape, line_width)
        else:
            draw_shape(planes[index], shape, line_width)
    for index, canvas in canvases.items():
        planes[index] |= np.asarray(canvas, dtype=np.uint8)
    stats.pixels = {name: int(np.count_nonzero(plane)) for name, plane in zip(classes, planes)}
    if not planes:
        return np.zeros((height, width, 0), dtype=np.uint8), stats
    return np.stack(planes, axis=-1), stats


def count_outside(points: np.ndarray, height: int, width: int) -> int:
    """How many points lie outside the image (pixel i spans the coordinates i .. i + 1)."""
    x, y = points[:, 0], points[:, 1]
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    return int(np.count_nonzero(outside))


def draw_shape(plane: np.ndarray, shape: Shape, line_width: int = LABELME_LINE_WIDTH) -> None:
    """Set to 1 the pixels of a 2-D uint8 plane that a shape covers, as Labelme's conversion does (points: none)."""
    kind = shape.shape_type
    if kind == "mask":
        _paste_mask(plane, shape)
    elif kind == "circle" and _radius(shape) > MAX_RADIUS:
        _fill_disc(plane, shape.points[0], _radius(shape))
    elif kind not in ("point", "points"):
        canvas = Image.new("L", (plane.shape[1], plane.shape[0]), 0)
        _draw(ImageDraw.Draw(canvas), plane.shape, shape, line_width)
        plane |= np.asarray(canvas, dtype=np.uint8)


def _drawn_by_pillow(shape: Shape) -> bool:
    return shape.shape_type not in ("mask", "point", "points") and not (
        shape.shape_type == "circle" and _radius(shape) > MAX_RADIUS)


def _radius(shape: Shape) -> float:
    return float(np.hypot(*(shape.points[1] - shape.points[0])))


def _draw(draw: ImageDraw.ImageDraw, size: tuple, shape: Shape, line_width: int) -> None:
    """Draw a polygon, rectangle, circle or line shape with Pillow, ink 1, as Labelme's shape_to_mask does."""
    height, width = size
    points = shape.points
    kind = shape.shape_type
    box = (-FAR, -FAR, width + FAR, height + FAR)
    if kind in ("polygon", "oriented_rectangle"):
        points = _clip_polygon(points, *box)
        if len(points) >= 2:
            draw.polygon(_xy(points), fill=1, outline=1)
    elif kind == "rectangle":
        low = np.maximum(points.min(axis=0), box[:2])
        high = np.minimum(points.max(axis=0), box[2:])
        if (low <= high).all():
            draw.rectangle((float(low[0]), float(low[1]), float(high[0]), float(high[1])), fill=1, outline=1)
    elif kind == "circle":
        (cx, cy), radius = points[0], _radius(shape)
        if box[0] <= cx <= box[2] and box[1] <= cy <= box[3]:  # else too far out to reach the image
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1, outline=1)
    elif kind in ("line", "linestrip"):
        if _outside(points, *box):
            for start, end in zip(points[:-1], points[1:]):  # far-reaching segments cut one by one (no joints)
                segment = _clip_segment(start, end, *box)
                if segment is not None:
                    draw.line(_xy(segment), fill=1, width=line_width)
        else:
            draw.line(_xy(points), fill=1, width=line_width, joint="curve" if kind == "linestrip" else None)


def _xy(points: np.ndarray) -> list:
    return [(float(x), float(y)) for x, y in points]


def _outside(points: np.ndarray, left: float, top: float, right: float, bottom: float) -> bool:
    return bool((points.min(axis=0) < (left, top)).any() or (points.max(axis=0) > (right, bottom)).any())


def _fill_disc(plane: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Set the pixels whose centres (i + 0.5) lie within radius of centre, a band of rows at a time."""
    height, width = plane.shape
    cx, cy = float(centre[0]), float(centre[1])
    x = np.arange(width, dtype=np.float64)[None, :] + 0.5 - cx
    rows = max(1, (1 << 20) // width)
    for top in range(0, height, rows):
        y = np.arange(top, min(top + rows, height), dtype=np.float64)[:, None] + 0.5 - cy
        plane[top:top + y.shape[0]] |= (x * x + y * y <= radius * radius).view(np.uint8)


def _clip_polygon(points: np.ndarray, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """The polygon cut to a box (Sutherland-Hodgman), so far-away vertices reach no drawing routine."""
    if not _outside(points, left, top, right, bottom):
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


def _clip_segment(start, end, left: float, top: float, right: float, bottom: float) -> np.ndarray | None:
    """The part of a segment inside a box (Liang-Barsky), None when it misses the box."""
    d = end - start
    t0, t1 = 0.0, 1.0
    for p, q in ((-d[0], start[0] - left), (d[0], right - start[0]), (-d[1], start[1] - top), (d[1], bottom - start[1])):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    return np.stack([start + t0 * d, start + t1 * d])


def mask_origin(shape: Shape) -> tuple[int, int, int, int]:
    """(x, y, height, width) of the patch a mask shape pastes, as Labelme places it (see the module docstring)."""
    corners = np.sort(shape.points, axis=0)
    (x1, y1), (x2, y2) = np.round(corners).astype(np.int64)
    if np.array_equal(corners, np.trunc(corners)):
        return int(x1), int(y1), int(y2 - y1 + 1), int(x2 - x1 + 1)
    h, w = shape.mask.shape if shape.mask is not None else (0, 0)
    return int(x1), int(y1), int(h), int(w)


def _paste_mask(plane: np.ndarray, shape: Shape) -> None:
    if shape.mask is None:
        return
    x0, y0, h, w = mask_origin(shape)
    h, w = min(h, shape.mask.shape[0]), min(w, shape.mask.shape[1])
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + h, plane.shape[0]), min(x0 + w, plane.shape[1])
    if bottom <= top or right <= left:
        return
    region = shape.mask[top - y0 : bottom - y0, left - x0 : right - x0]
    plane[top:bottom, left:right] |= region.astype(np.uint8)
