"""Turn predicted probabilities into clean binary masks, count their components, and trace them as polygons.

Foreground components are 8-connected (pixels touching at a corner belong together); background is therefore
4-connected, so a hole is a region of background that no 4-connected path joins to the image border.
Masks come back as uint8 arrays of 0 and 1.

Polygons (`mask_to_polygons`, for Labelme export) trace the outer boundary pixel centres of each component
(cv2.findContours, RETR_EXTERNAL) and simplify them with cv2.approxPolyDP (epsilon in pixels, 0 = none).
Holes are not traced: rasterising the polygons fills them, as does `fill_holes`. A component that simplifies to
fewer than 3 vertices (a line or a dot) is dropped, as are components below min_area pixels. Rasterised back
with cv2.fillPoly(mask, [np.round(p).astype(np.int32)], 1), hole-free blob-like masks come back with Dice of
about 0.99 at epsilon 0.5 (exactly, bar dropped small components, at epsilon 0).

Automatic clean-up (`choose_cleanup`, `auto_postprocess`; training runs them on its training masks when
postprocess.auto is on): a class whose expert masks have at most N components in nearly every image (AUTO_SHARE of
the images where it is present), N being at most AUTO_MAX_PARTS, and whose masks are hole-free in nearly every
image is a structure of a few solid parts (a clavicle, both lungs in one channel): it gets keep_largest N and hole
filling. A class of many parts (separate ribs in one channel) or with holes (the ribs of each side joined into one
lattice, as in the bundled sample) gets neither: filling would close the spaces between the ribs, and keeping the
largest would drop the pieces of a lattice the model did not join. Such a class gets a per-class minimum area
instead (min_areas): MIN_AREA_SHARE of its smallest training component (the AUTO_SHARE-th smallest over the masks),
which drops specks but keeps every rib; LATTICE_AREA_SHARE of it for a class with holes, whose smallest component
is a whole lattice of ribs (a piece the model did not join can be a single short rib). The same choice says how
the refine stage treats a class (`refine`): around its largest component (one part), one crop per component
(2 to REFINE_MAX_PARTS parts), or not at all: more parts (20 separate ribs would make 20 crops an image), or parts
so large (their longer side at least REFINE_MAX_EXTENT of the image's in the median mask, as the bundled sample's
rib lattices) that a crop around one is hardly finer than the whole image (on the sample: rib Dice 0.9229 not
refined, 0.9216 per component, 0.9213 around the largest; docs/experiments.md, issue 21).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from keras_unet.errors import ConfigError


def _mask2d(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    return (m > 0).astype(np.uint8)


def foreground_window(mask: np.ndarray):
    """(rows, columns) slices of the smallest box holding every foreground pixel of a 2-D mask; None when empty.

    Component work on a 1024 px mask of one clavicle costs about 9 ms over the whole image and well under 1 ms
    inside this box, with the same result (every pixel outside it is background)."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1)


def _labelled(m: np.ndarray):
    """(window, labels, stats) of the 8-connected components of a 0/1 uint8 mask, worked inside its foreground's
    box (labels and stats in the box's pixels, row 0 the background); None when the mask is empty."""
    window = foreground_window(m)
    if window is None:
        return None
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m[window], connectivity=8)
    return window, labels, stats


def component_stats(mask) -> np.ndarray:
    """cv2 statistics (x, y, w, h, area per row) of each 8-connected component of a 2-D mask, in image pixels."""
    found = _labelled(_mask2d(mask))
    if found is None:
        return np.zeros((0, 5), np.int32)
    window, _, stats = found
    stats = stats[1:]
    stats[:, cv2.CC_STAT_LEFT] += window[1].start
    stats[:, cv2.CC_STAT_TOP] += window[0].start
    return stats


def _keep_components(mask, choose) -> np.ndarray:
    """2-D 0/1 mask with only the components whose row of choose(areas) is True (areas[0]: the background)."""
    m = _mask2d(mask)
    found = _labelled(m)
    if found is None:
        return m
    window, labels, stats = found
    keep = choose(stats[:, cv2.CC_STAT_AREA])
    keep[0] = False
    m[window] = keep[labels]
    return m


def threshold(probs, thresholds) -> np.ndarray:
    """Binary uint8 masks of the pixels strictly above the threshold, one value or one per channel (last axis)."""
    p = np.asarray(probs, dtype=np.float32)
    t = np.asarray(thresholds, dtype=np.float32)
    if t.ndim > 1 or (t.ndim == 1 and (p.ndim < 3 or t.shape[0] != p.shape[-1])):
        raise ValueError(f"{t.size} threshold(s) do not fit probabilities of shape {p.shape}")
    if t.ndim == 0 or np.all(t == t[0]):  # one scalar: numpy's fast loop (a per-channel array of 2 is 30x slower)
        return np.greater(p, t.ravel()[0]).view(np.uint8)  # the booleans' bytes are 0 and 1: no copy
    out = np.empty(p.shape, dtype=bool)
    for c, value in enumerate(t):
        np.greater(p[..., c], value, out=out[..., c])
    return out.view(np.uint8)


def count_components(mask) -> int:
    """Number of 8-connected foreground components of a 2-D mask."""
    return int(cv2.connectedComponents(_mask2d(mask), connectivity=8)[0]) - 1


def stray_components(mask, expected: int) -> int:
    """How many components a 2-D mask has beyond the expected count (0 when it has no more)."""
    return max(0, count_components(mask) - int(expected))


def remove_small(mask, min_area: int) -> np.ndarray:
    """2-D mask without the components of fewer than min_area pixels."""
    if min_area <= 1:
        return _mask2d(mask)
    return _keep_components(mask, lambda areas: areas >= min_area)


def keep_largest(mask, n: int) -> np.ndarray:
    """2-D mask with only its n largest components (ties: the one met first in raster order wins)."""
    def largest(areas):
        order = np.argsort(-areas[1:], kind="stable") + 1
        keep = np.zeros(len(areas), dtype=bool)
        keep[order[:max(0, int(n))]] = True
        return keep

    return _keep_components(mask, largest)


def fill_holes(mask) -> np.ndarray:
    """2-D mask with every hole filled: background not 4-connected to the image border becomes foreground."""
    m = _mask2d(mask)
    window = foreground_window(m)
    if window is None:
        return m
    # inside the foreground's box, padded with background: everything outside the box is background that reaches
    # the image border, so the pad stands for all of it
    background = np.pad(1 - m[window], 1, constant_values=1)
    _, labels = cv2.connectedComponents(background, connectivity=4)
    m[window] = labels[1:-1, 1:-1] != labels[0, 0]
    return m


AUTO_MAX_PARTS = 3  # most components per image for a class to count as a structure of a few parts
AUTO_SHARE = 0.95  # "nearly every image": this share of the images where the class is present


REFINE_MAX_PARTS = 4  # most components per image for the refine stage to cut one crop per component
REFINE_MAX_EXTENT = 0.5  # a class whose largest part spans this share of the image (median mask) is not refined
MIN_AREA_SHARE = 0.05  # a many-part class's minimum component area: this share of its smallest training component
LATTICE_AREA_SHARE = 0.01  # the same for a class with holes (ribs joined into a lattice)


def mask_structure(mask) -> tuple[int, bool, int, float]:
    """(number of 8-connected components, whether it has a hole, its smallest component's area in pixels, its
    largest component's longer side over the image's longer side; 0 and 0.0 when empty) of a 2-D mask."""
    m = _mask2d(mask)
    stats = cv2.connectedComponentsWithStats(m, connectivity=8)[2][1:]
    if not len(stats):
        return 0, False, 0, 0.0
    largest = stats[int(np.argmax(stats[:, cv2.CC_STAT_AREA]))]
    extent = max(largest[cv2.CC_STAT_WIDTH], largest[cv2.CC_STAT_HEIGHT]) / max(m.shape)
    return len(stats), bool(np.any(fill_holes(m) != m)), int(stats[:, cv2.CC_STAT_AREA].min()), float(extent)


def _share_rank(count: int) -> int:
    """Index of the AUTO_SHARE-th value among count sorted ones."""
    return max(0, int(np.ceil(AUTO_SHARE * count)) - 1)


def refine_mode(parts: int, extent: float = 0.0) -> str:
    """How the refine stage treats a class of this many parts, its largest spanning extent of the image:
    "largest", "components" or "skip"."""
    if extent >= REFINE_MAX_EXTENT:
        return "skip"
    return "largest" if parts <= 1 else "components" if parts <= REFINE_MAX_PARTS else "skip"


def _refine_choice(present: list, parts: int) -> str:
    extents = sorted(s[3] for s in present if len(s) > 3)
    return refine_mode(parts, float(np.median(extents)) if extents else 0.0)


def choose_cleanup(structures) -> dict:
    """The clean-up one class gets from its training masks' (components, has hole[, smallest area[, extent]])
    tuples (mask_structure).

    Returns {"parts": N, "keep_largest": N or None, "fill_holes": bool, "min_area": pixels or None, "refine": mode};
    N is the fewest components that AUTO_SHARE of the masks where the class is present stay within (0 when it is
    present in none). keep_largest and fill_holes are on for a class of at most AUTO_MAX_PARTS parts whose masks
    are hole-free in AUTO_SHARE of them; any other class gets min_area instead (module docstring)."""
    present = [s for s in structures if s[0] > 0]
    if not present:
        return {"parts": 0, "keep_largest": None, "fill_holes": False, "min_area": None, "refine": "skip"}
    parts = sorted(s[0] for s in present)[_share_rank(len(present))]
    holed = sum(1 for s in present if s[1])
    if parts > AUTO_MAX_PARTS or holed > (1 - AUTO_SHARE) * len(present):
        smallest = sorted((s[2] for s in present if len(s) > 2), reverse=True)
        share = LATTICE_AREA_SHARE if holed > (1 - AUTO_SHARE) * len(present) else MIN_AREA_SHARE
        min_area = int(share * smallest[_share_rank(len(smallest))]) if smallest else None
        return {"parts": parts, "keep_largest": None, "fill_holes": False, "min_area": min_area or None,
                "refine": _refine_choice(present, parts)}
    return {"parts": parts, "keep_largest": parts, "fill_holes": True, "min_area": None,
            "refine": _refine_choice(present, parts)}


def auto_postprocess(settings, structures: dict):
    """A copy of the postprocess settings with the automatic per-class choice where the user set none.

    structures: {class: [(components, has hole) of each training mask]}. A class named in keep_largest keeps the
    user's N; fill_holes false or a list of classes is the user's and stays; true (the default) becomes the list
    of the classes that choose_cleanup fills; min_areas gets the chosen minimum area of a class the user gave
    neither keep_largest nor a min_areas entry. Settings with auto off come back unchanged."""
    if not getattr(settings, "auto", False):
        return dataclasses.replace(settings)
    choice = {name: choose_cleanup(found) for name, found in structures.items()}
    largest = {name: c["keep_largest"] for name, c in choice.items() if c["keep_largest"] is not None}
    largest.update(settings.keep_largest or {})
    fill = settings.fill_holes
    if fill is True:
        fill = [name for name, c in choice.items() if c["fill_holes"]]
    areas = {name: c["min_area"] for name, c in choice.items() if c["min_area"] and name not in largest}
    areas.update(settings.min_areas or {})
    return dataclasses.replace(settings, keep_largest=largest, fill_holes=fill, min_areas=areas)


def auto_refine(refine, structures: dict):
    """A copy of the refine settings with classes and components chosen from the training masks (choose_cleanup)
    where components is "auto": with classes empty, every class but those to skip; components, the listed
    classes not refined around their largest part. No class left: enabled becomes false."""
    if refine.components != "auto":
        return dataclasses.replace(refine)
    mode = {name: choose_cleanup(found)["refine"] for name, found in structures.items()}
    classes = list(refine.classes) or [name for name in structures if mode[name] != "skip"]
    components = [name for name in classes if mode.get(name, "largest") != "largest"]
    return dataclasses.replace(refine, classes=classes, components=components, enabled=refine.enabled and bool(classes))


def filled_classes(settings, classes) -> list:
    """The classes whose holes clean_masks fills: fill_holes true (all), false (none) or a list of class names."""
    fill = settings.fill_holes
    if isinstance(fill, bool):
        return list(classes) if fill else []
    if not isinstance(fill, (list, tuple)):
        raise ConfigError(f"postprocess.fill_holes must be true, false or a list of classes, got {fill!r}")
    return list(_per_class(dict.fromkeys(fill), list(classes), "fill_holes"))


def _per_class(setting: dict, classes: list, what: str) -> dict:
    unknown = sorted(set(setting) - set(classes))
    if unknown:
        raise ConfigError(f"postprocess.{what} names class(es) {', '.join(map(str, unknown))} "
                          f"not among {', '.join(map(str, classes))}")
    return setting


def class_thresholds(settings, classes) -> list[float]:
    """The probability threshold of each class: its postprocess.thresholds entry, else postprocess.threshold."""
    thresholds = _per_class(dict(settings.thresholds or {}), list(classes), "thresholds")
    return [float(thresholds.get(name, settings.threshold)) for name in classes]


def class_min_areas(settings, classes) -> list[int]:
    """The minimum component area of each class: its postprocess.min_areas entry, else postprocess.min_area."""
    areas = _per_class(dict(settings.min_areas or {}), list(classes), "min_areas")
    return [int(areas.get(name, settings.min_area) or 0) for name in classes]


def clean_masks(probs, classes, settings) -> np.ndarray:
    """(H, W, C) uint8 0/1 masks from probabilities: threshold, then (when enabled) drop small (class_min_areas),
    keep largest, fill holes (the classes of filled_classes)."""
    p = np.asarray(probs)
    classes = list(classes)
    if p.ndim != 3 or p.shape[-1] != len(classes):
        raise ValueError(f"probabilities of shape {p.shape} do not match {len(classes)} class(es)")
    largest = _per_class(dict(settings.keep_largest or {}), classes, "keep_largest")
    filled = filled_classes(settings, classes)
    masks = threshold(p, class_thresholds(settings, classes))
    if not settings.enabled:
        return masks
    min_areas = class_min_areas(settings, classes)
    for c, name in enumerate(classes):
        m = remove_small(masks[..., c], min_areas[c])
        if name in largest:
            m = keep_largest(m, int(largest[name]))
        if name in filled:
            m = fill_holes(m)
        masks[..., c] = m
    return masks


def mask_to_polygons(mask, min_area: int = 10, epsilon: float = 0.5, offset: float = 0.0,
                     min_dice: float = 0.0) -> list[np.ndarray]:
    """Outer outlines of a 2-D mask's components as (N, 2) float x, y polygons, holes ignored (filled).

    The vertices are boundary pixel centres, simplified by Douglas-Peucker (epsilon pixels, 0 = none), plus offset:
    0.5 gives Labelme's coordinates (pixel i spans i .. i + 1), where the outline is drawn through the pixel centres
    and rasterises back to the same pixels. min_dice: a component whose simplified outline, filled as Labelme fills
    it (Pillow), has less than this Dice with the component's filled outline (small or thin ones) is simplified
    again with 0.7 times the tolerance, down to none."""
    from PIL import Image, ImageDraw

    m = remove_small(mask, min_area)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)

        def filled(points):
            canvas = Image.new("L", (w, h), 0)
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in (points.reshape(-1, 2) - (x, y)).tolist()], fill=1,
                                           outline=1)
            return np.asarray(canvas, dtype=bool)

        traced = filled(contour) if min_dice > 0 and len(contour) >= 3 else None
        tolerance = epsilon
        while True:
            simple = cv2.approxPolyDP(contour, tolerance, True) if tolerance > 0 else contour
            if traced is None or tolerance <= 0:
                break
            if len(simple) >= 3:
                shape = filled(simple)
                if 2.0 * np.count_nonzero(shape & traced) / (shape.sum() + traced.sum()) >= min_dice:
                    break
            tolerance = tolerance * 0.7 if tolerance > 0.25 else 0.0
        if len(simple) >= 3:
            polygons.append(simple.reshape(-1, 2).astype(np.float64) + offset)
    return polygons
