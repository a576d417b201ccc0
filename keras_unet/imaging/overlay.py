"""Pictures for people: predictions over X-rays, thumbnail sheets, and atomic PNG writes (OpenCV only).

In an overlay the prediction is a semi-transparent fill in the class colour, and the ground truth a solid outline
in the same colour on the truth's own boundary pixels, edged outside in black, so the two read apart even where they
coincide. Outlines are 1 pixel wide up to 512 px images and grow by one pixel per doubling of the size beyond, so
they do not hide thin structures. In an error overlay (`errors=True`) each class's pixels are coloured by how they
compare with the ground truth instead: true positive, false positive (predicted, not in the truth) or false negative
(in the truth, missed); where classes disagree about a pixel, a false negative shows over a false positive over a
true positive. The legend sits in a band below the image, never over the anatomy. Arrays are RGB uint8 throughout;
only `save_rgb` converts to BGR.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import cv2
import numpy as np

from keras_unet.io.files import write_bytes_atomic

# Okabe & Ito (2008), black left out: distinguishable with the common colour-vision deficiencies.
OKABE_ITO = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
             (204, 121, 167)]
FILL_ALPHA = 0.45
# error overlays: Okabe-Ito bluish green, vermillion and blue, in the order they are painted (the last one wins)
ERROR_COLORS = {"TP": (0, 158, 115), "FP": (213, 94, 0), "FN": (0, 114, 178)}
ERROR_NAMES = {"TP": "true positive", "FP": "false positive", "FN": "false negative"}
ERROR_ALPHA = 0.6
BAND_COLOR = (24, 24, 24)
SHEET_COLOR = (56, 56, 56)
TEXT_COLOR = (240, 240, 240)
EDGE_COLOR = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_CAPTION_SCALE = 0.45
_GAP = 6  # pixels between contact-sheet cells and around them


def class_colors(n: int) -> list[tuple[int, int, int]]:
    """n distinct RGB colours: the Okabe-Ito palette first, then evenly spread hues."""
    colors = list(OKABE_ITO[:n])
    for i in range(n - len(colors)):
        r, g, b = colorsys.hsv_to_rgb((0.11 + i * 0.618034) % 1.0, 0.65 if i % 2 else 0.9, 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def to_display(image) -> np.ndarray:
    """uint8 (H, W) grey version of an image, its 1st..99th intensity percentiles stretched over 0..255."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=2)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image (or H, W, channels), got shape {np.shape(image)}")
    stride = max(1, max(a.shape) // 1024)
    sample = a[::stride, ::stride]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = np.percentile(sample, [1, 99])
    if hi <= lo:
        lo, hi = sample.min(), sample.max()
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    scaled = np.nan_to_num((a - lo) * (255.0 / (hi - lo)), nan=0.0)
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _channels(mask, shape: tuple, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[..., None]
    if m.ndim != 3 or m.shape[:2] != shape:
        raise ValueError(f"{what} of shape {np.shape(mask)} does not match the image's {shape}")
    return m > 0


def line_width(shape: tuple) -> int:
    """Outline width in pixels for an image of this shape: 1 up to 512 px, one more per doubling beyond."""
    side = max(shape[:2])
    return 1 if side <= 512 else 1 + int(math.floor(math.log2(side / 512)))


def _outline(canvas: np.ndarray, mask: np.ndarray, color, width: int) -> None:
    """The mask's boundary, `width` pixels inside it, in colour; a black edge of about half that just outside."""
    m = mask.astype(np.uint8)
    if not m.any():
        return
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    inner = cv2.erode(m, cross, iterations=width, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    outer = cv2.dilate(m, cross, iterations=max(1, width // 2))
    canvas[(outer > 0) & (m == 0)] = EDGE_COLOR
    canvas[(m > 0) & (inner == 0)] = tuple(int(v) for v in color)


def _font(width: int) -> tuple[float, int, int]:
    """Font scale, stroke and line height for legend text on an image this many pixels wide."""
    text_height = max(14, int(round(width * 0.022)))
    scale = text_height / 27.0
    return scale, max(1, int(round(scale * 1.8))), int(round(text_height * 1.7))


def _legend_items(names: list, colors: list, has_truth: bool, title) -> list:
    items = [("text", str(title), None)] if title else []
    items += [("class", str(name), color) for name, color in zip(names, colors)]
    key = "fill = prediction, outline = ground truth" if has_truth else "fill = prediction (no ground truth)"
    return items + [("text", key, None)]


def _error_items(names: list, counts: np.ndarray, title) -> list:
    """Legend of an error overlay: the three colours, then each class's TP / FP / FN pixel counts."""
    items = [("text", str(title), None)] if title else []
    items += [("class", f"{k} {ERROR_NAMES[k]}", color) for k, color in ERROR_COLORS.items()]
    for name, (tp, fp, fn) in zip(names, counts):
        items.append(("text", f"{name}: TP {tp}  FP {fp}  FN {fn} px", None))
    return items


def _layout(items: list, width: int, scale: float, stroke: int, line_height: int) -> list:
    """Items placed as (kind, text, colour, line, x): classes wrap to fit the width, other text gets its own line."""
    placed, line, margin = [], 0, line_height // 2
    x = margin
    for kind, text, color in items:
        w = cv2.getTextSize(text, _FONT, scale, stroke)[0][0]
        w += line_height + line_height // 4 if kind == "class" else 0
        if x > margin and (kind == "text" or x + w > width - margin):
            line, x = line + 1, margin
        placed.append((kind, text, color, line, x))
        x = width if kind == "text" else x + w + line_height
    return placed


def _legend_band(width: int, items: list, alpha: float = FILL_ALPHA) -> np.ndarray:
    scale, stroke, line_height = _font(width)
    placed = _layout(items, width, scale, stroke, line_height)
    lines = 1 + max(item[3] for item in placed)
    band = np.full((lines * line_height + line_height // 2, width, 3), BAND_COLOR, np.uint8)
    box, edge = int(line_height * 0.6), max(2, stroke)
    for kind, text, color, line, x in placed:
        top = line_height // 4 + line * line_height
        baseline = top + (line_height + int(27 * scale)) // 2
        if kind == "class":
            y0, x0 = top + (line_height - box) // 2, x + (line_height - box) // 2
            fill = tuple(int(round(128 * (1 - alpha) + v * alpha)) for v in color)
            cv2.rectangle(band, (x0, y0), (x0 + box, y0 + box), fill, -1)
            cv2.rectangle(band, (x0, y0), (x0 + box, y0 + box), EDGE_COLOR, edge + 4, cv2.LINE_AA)
            cv2.rectangle(band, (x0, y0), (x0 + box, y0 + box), tuple(int(v) for v in color), edge, cv2.LINE_AA)
            x += line_height + line_height // 4
        cv2.putText(band, text, (x, baseline), _FONT, scale, TEXT_COLOR, stroke, cv2.LINE_AA)
    return band


def error_masks(pred, truth) -> dict:
    """{"TP", "FP", "FN"}: (H, W, C) bool masks of each class's true positives, false positives, false negatives."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction of shape {p.shape} does not match the ground truth's {t.shape}")
    return {"TP": p & t, "FP": p & ~t, "FN": ~p & t}


def draw_overlay(image, pred, truth=None, classes=None, title=None, errors: bool = False) -> np.ndarray:
    """RGB uint8 picture: image with prediction fills and ground-truth outlines per class, legend band below.

    errors=True (ground truth needed): each class's true positives, false positives and false negatives
    in ERROR_COLORS instead, with their pixel counts per class in the legend."""
    grey = to_display(image)
    p = _channels(pred, grey.shape, "prediction")
    t = None if truth is None else _channels(truth, grey.shape, "ground truth")
    if t is not None and t.shape != p.shape:
        raise ValueError(f"ground truth has {t.shape[-1]} class(es), prediction {p.shape[-1]}")
    names = list(classes) if classes is not None else [f"class {i + 1}" for i in range(p.shape[-1])]
    if len(names) != p.shape[-1]:
        raise ValueError(f"{len(names)} class name(s) for {p.shape[-1]} mask channel(s)")
    canvas = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if errors:
        if t is None:
            raise ValueError("an error overlay needs the ground truth")
        kinds = error_masks(p, t)
        for kind, color in ERROR_COLORS.items():
            m = kinds[kind].any(axis=-1)
            canvas[m] = (grey[m, None].astype(np.float32) * (1 - ERROR_ALPHA)
                         + np.array(color, np.float32) * ERROR_ALPHA)
        counts = np.stack([kinds[k].sum(axis=(0, 1)) for k in ERROR_COLORS], axis=-1)
        band = _legend_band(grey.shape[1], _error_items(names, counts, title), ERROR_ALPHA)
        return np.concatenate([canvas.round().astype(np.uint8), band], axis=0)
    colors = class_colors(len(names))
    for c, color in enumerate(colors):
        m = p[..., c]
        canvas[m] = canvas[m] * (1 - FILL_ALPHA) + np.array(color, np.float32) * FILL_ALPHA
    canvas = canvas.round().astype(np.uint8)
    if t is not None:
        width = line_width(grey.shape)
        for c, color in enumerate(colors):
            _outline(canvas, t[..., c], color, width)
    band = _legend_band(grey.shape[1], _legend_items(names, colors, t is not None, title))
    return np.concatenate([canvas, band], axis=0)


def _fit(tile, size: int) -> np.ndarray:
    """Tile scaled to fit a size x size box (aspect kept), centred on the sheet colour."""
    t = np.asarray(tile)
    if t.ndim == 2 or t.shape[-1] == 1:
        grey = t.reshape(t.shape[:2])
        t = np.repeat((grey if grey.dtype == np.uint8 else to_display(grey))[..., None], 3, axis=2)
    elif t.dtype != np.uint8:
        t = np.clip(t, 0, 255).astype(np.uint8)
    h, w = t.shape[:2]
    f = size / max(h, w)
    nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    small = cv2.resize(t, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    box = np.full((size, size, 3), SHEET_COLOR, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    box[y:y + nh, x:x + nw] = small
    return box


def _shorten(text: str, width: int) -> str:
    """Text cut with an ellipsis so that it fits the width at the caption size."""
    if cv2.getTextSize(text, _FONT, _CAPTION_SCALE, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", _FONT, _CAPTION_SCALE, 1)[0][0] > width:
        text = text[:-1]
    return text + "..."


def caption_height() -> int:
    """Height in pixels of the caption strip under each contact-sheet tile."""
    return 2 * cv2.getTextSize("Ag", _FONT, _CAPTION_SCALE, 1)[0][1] + 4


def contact_sheet(tiles, labels, columns=None, tile_size: int = 256) -> np.ndarray:
    """RGB uint8 grid of thumbnails (tile_size square, aspect kept) with a caption under each."""
    tiles, labels = list(tiles), [str(label) for label in labels]
    if not tiles:
        raise ValueError("contact sheet needs at least one tile")
    if len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} label(s) for {len(tiles)} tile(s)")
    columns = int(columns) if columns else math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cap = caption_height()
    cell_w, cell_h = tile_size + _GAP, tile_size + cap + _GAP
    sheet = np.full((rows * cell_h + _GAP, columns * cell_w + _GAP, 3), SHEET_COLOR, np.uint8)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        y, x = _GAP + (i // columns) * cell_h, _GAP + (i % columns) * cell_w
        sheet[y:y + tile_size, x:x + tile_size] = _fit(tile, tile_size)
        text = _shorten(label, tile_size - 4)
        baseline = y + tile_size + (cap + cv2.getTextSize("A", _FONT, _CAPTION_SCALE, 1)[0][1]) // 2
        left = x + (tile_size - cv2.getTextSize(text, _FONT, _CAPTION_SCALE, 1)[0][0]) // 2
        cv2.putText(sheet, text, (left, baseline), _FONT, _CAPTION_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)
    return sheet


def save_rgb(path, rgb) -> None:
    """Write an RGB (or grey) uint8 image as PNG atomically: a temporary file, then a rename over the target."""
    path = Path(path)
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) image, got {a.dtype} {a.shape}")
    ok, data = cv2.imencode(".png", a if a.ndim == 2 else cv2.cvtColor(a, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, data.tobytes())
