"""Per-image, per-class scores of binary masks: overlap (Dice, IoU, precision, recall), boundary distances (HD95, ASSD).

Masks are 2-D arrays at the image's original resolution; any non-zero pixel is foreground.

Edge-case conventions (one rule for every overlap score, so that summaries never meet a NaN):
  * both masks empty            -> dice = iou = precision = recall = 1.0 (nothing to find, nothing found);
  * exactly one mask empty      -> dice = iou = precision = recall = 0.0 (a missed structure, or a structure
    predicted where there is none, scores as a failure; this is the usual nnU-Net reading for Dice);
  * otherwise the plain ratios: dice = 2tp/(2tp+fp+fn), iou = tp/(tp+fp+fn), precision = tp/(tp+fp),
    recall = tp/(tp+fn).

Surface distances (hd95, assd):
  * both masks empty            -> 0.0;
  * exactly one mask empty      -> inf (undefined; `summarize` leaves it out of the statistics and counts it);
  * otherwise computed on boundary pixels (the mask minus its 3x3 erosion, image-edge pixels included).
    hd95 is the 95th percentile (numpy's linear interpolation) of the two directed distance sets concatenated,
    as medpy's ``hd95`` does; MONAI instead takes the larger of the two directed 95th percentiles, which can
    be larger. assd is the mean of the same concatenation, as MONAI's symmetric average surface distance does;
    medpy's ``assd`` averages the two directed means instead, which differs when the boundaries differ in length.
Distances are Euclidean, in pixels, or in millimetres when a spacing (row, column) in mm per pixel is given;
DICOM's PixelSpacing lists them in that order.

Summaries (`summarize`) take the rows of many images (a flat list, or one list per image) and report, per class and
score: mean, std (population, ddof=0), median and worst (lowest for overlap scores, highest for distances) over
the finite values only, with n (values used) and n_undefined (inf, NaN or missing: e.g. hd95 when one mask is
empty). A statistic with no finite value is None, so the summary stays valid JSON. When rows carry an "image" key,
worst_image names the image that gave the worst value.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

OVERLAP_METRICS = ("dice", "iou", "precision", "recall")
DISTANCE_METRICS = ("hd95", "assd")
SUMMARY_METRICS = OVERLAP_METRICS + DISTANCE_METRICS + ("hd95_mm", "assd_mm")
_LOWER_IS_BETTER = {"hd95", "assd", "hd95_mm", "assd_mm"}


def _binary(mask) -> np.ndarray:
    return np.asarray(mask) > 0


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = _binary(pred), _binary(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"expected 2-D masks, got shape {p.shape}")
    return p, t


def confusion(pred, truth) -> tuple[int, int, int, int]:
    """Pixel counts (tp, fp, fn, tn) of a predicted mask against the ground truth."""
    p, t = _pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return tp, fp, fn, int(p.size) - tp - fp - fn


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def _overlap(tp: int, fp: int, fn: int) -> dict:
    both_empty = tp + fp + fn == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
    }


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice 2tp / (2tp + fp + fn) from pixel counts: 1.0 when both masks are empty."""
    return _overlap(tp, fp, fn)["dice"]


def dice(pred, truth) -> float:
    """Dice coefficient 2|P&T|/(|P|+|T|): 1.0 when both masks are empty, 0.0 when exactly one is."""
    return _overlap(*confusion(pred, truth)[:3])["dice"]


def iou(pred, truth) -> float:
    """Intersection over union |P&T|/|P|T|: 1.0 when both masks are empty, 0.0 when exactly one is."""
    return _overlap(*confusion(pred, truth)[:3])["iou"]


def precision(pred, truth) -> float:
    """Fraction of predicted pixels that are true: 1.0 when both masks are empty, 0.0 when only the prediction is."""
    return _overlap(*confusion(pred, truth)[:3])["precision"]


def recall(pred, truth) -> float:
    """Fraction of true pixels that are predicted: 1.0 when both masks are empty, 0.0 when exactly one is."""
    return _overlap(*confusion(pred, truth)[:3])["recall"]


def mask_boundary(mask) -> np.ndarray:
    """Boolean boundary of a 2-D mask: foreground pixels with a background 8-neighbour or on the image edge."""
    m = _binary(mask).astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def _spacing(spacing) -> tuple[float, float]:
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.shape != (2,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be one or two positive numbers (row, column), got {spacing!r}")
    return float(values[0]), float(values[1])


def _distances_to(features: np.ndarray, queries: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Distance from each True pixel of `queries` to the nearest True pixel of `features` (inf if there is none)."""
    ys, xs = np.nonzero(queries)
    if not features.any():
        return np.full(len(ys), np.inf)
    field = ndimage.distance_transform_edt(~features, sampling=spacing)  # exact Euclidean, anisotropic spacing
    return field[ys, xs].astype(np.float64)


def surface_distances(pred, truth, spacing=(1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances (pred->truth, truth->pred) as float64 arrays; inf where the other mask is empty."""
    p, t = _pair(pred, truth)
    spacing = _spacing(spacing)
    bp, bt = mask_boundary(p), mask_boundary(t)
    return _distances_to(bt, bp, spacing), _distances_to(bp, bt, spacing)


def _distance_scores(forward: np.ndarray, backward: np.ndarray) -> tuple[float, float]:
    both = np.concatenate([forward, backward])
    if both.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(both)):
        return math.inf, math.inf
    return float(np.percentile(both, 95)), float(both.mean())


def hd95(pred, truth, spacing=(1.0, 1.0)) -> float:
    """95th percentile of both directed boundary distances pooled: 0.0 if both masks are empty, inf if one is."""
    return _distance_scores(*surface_distances(pred, truth, spacing))[0]


def assd(pred, truth, spacing=(1.0, 1.0)) -> float:
    """Mean of both directed boundary distances pooled: 0.0 if both masks are empty, inf if one is."""
    return _distance_scores(*surface_distances(pred, truth, spacing))[1]


def score_masks(pred, truth, classes, spacing=None) -> list[dict]:
    """Scores of (H, W, C) masks, one dict per class; distances in pixels, and in mm as *_mm when spacing is given."""
    p, t = _binary(pred), _binary(truth)
    if p.ndim == 2:
        p, t = p[..., None], t[..., None]
    classes = list(classes)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != len(classes):
        raise ValueError(f"masks of shape {p.shape} and {t.shape} do not match {len(classes)} class(es)")
    mm = None if spacing is None else _spacing(spacing)
    rows = []
    for c, name in enumerate(classes):
        pc, tc = p[..., c], t[..., c]
        tp, fp, fn, _ = confusion(pc, tc)
        row = {"class": name, **_overlap(tp, fp, fn)}
        forward, backward = surface_distances(pc, tc)
        row["hd95"], row["assd"] = _distance_scores(forward, backward)
        if mm is not None:
            if mm[0] == mm[1]:
                row["hd95_mm"], row["assd_mm"] = row["hd95"] * mm[0], row["assd"] * mm[0]
            else:
                row["hd95_mm"], row["assd_mm"] = _distance_scores(*surface_distances(pc, tc, mm))
        rows.append(row)
    return rows


def _flatten(rows) -> list[dict]:
    flat = []
    for row in rows:
        flat.extend(row if isinstance(row, (list, tuple)) else [row])
    return flat


def _statistics(values: list, images: list, lower_is_better: bool) -> dict:
    data = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    finite = np.isfinite(data)
    stats = {"n": int(finite.sum()), "n_undefined": int((~finite).sum())}
    if not finite.any():
        return {**stats, "mean": None, "std": None, "median": None, "worst": None, "worst_image": None}
    kept = data[finite]
    worst = int(np.flatnonzero(finite)[np.argmax(kept) if lower_is_better else np.argmin(kept)])
    return {
        **stats,
        "mean": float(kept.mean()),
        "std": float(kept.std()),
        "median": float(np.median(kept)),
        "worst": float(data[worst]),
        "worst_image": images[worst],
    }


def summarize(rows, classes) -> dict:
    """Per-class mean, std, median and worst of each score over images, finite values only, with counts."""
    rows = _flatten(rows)
    metrics = [m for m in SUMMARY_METRICS if any(m in row for row in rows)]
    summary = {}
    for name in classes:
        mine = [row for row in rows if row.get("class") == name]
        images = [row.get("image") for row in mine]
        entry = {"n_images": len(mine)}
        for metric in metrics:
            entry[metric] = _statistics([row.get(metric) for row in mine], images, metric in _LOWER_IS_BETTER)
        summary[name] = entry
    return summary


def soft_dice(a, b) -> float:
    """Soft Dice of two probability maps, 2 sum(a b) / (sum(a^2) + sum(b^2)); 1 when both are all zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float((a * a).sum() + (b * b).sum())
    return 1.0 if denominator == 0.0 else float(2.0 * (a * b).sum() / denominator)
