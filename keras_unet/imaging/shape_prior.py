"""A shape prior per class, learned from the training masks, and how far a predicted mask lies outside it.

Features of one 2-D mask (`mask_features`), each relative to the image so that sizes do not matter:

- area: the foreground's share of the image's pixels;
- parts: the number of 8-connected components;
- cx, cy: the foreground's centroid as a fraction of the image's width and height;
- length: the longer side of the minimum-area rectangle around the largest component, over the image width;
- thickness: the largest component's area over that rectangle's longer side (its mean thickness), over the image
  width.

The prior (`fit_prior`) keeps, per class and feature, the observed min, max, mean and standard deviation over the
training masks where the class is present, and the share of masks where it is. A prediction's deviation
(`deviation`) is, over the features, the largest distance beyond the observed [min, max] in units of the
feature's spread (its standard deviation, at least SPREAD_FLOOR of its mean): 0 inside the range, 1 one spread
beyond it. An empty mask of a class present in nearly every training mask deviates without bound (inf).

The model's uncertainty (infer.ranking's class score) has a level of its own per class: a thin clavicle is mostly
outline, so its score sits higher than a blob's. Training adds each class's scores on its validation images
(`fit_uncertainty`), and `uncertainty_limit` flags a score above their mean plus UNCERTAIN_Z spreads. numpy and
OpenCV only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

FEATURES = ("area", "parts", "cx", "cy", "length", "thickness")
SPREAD_FLOOR = 0.1  # a feature's spread is at least this share of its mean (a count that never varies: parts 1)
EXPECTED_SHARE = 0.95  # a class present in at least this share of the training masks is expected in every image
UNCERTAIN_Z = 3.0  # spreads above the validation images' mean uncertainty at which a mask counts as uncertain
PRIOR_VERSION = 1


def mask_features(mask) -> dict | None:
    """{feature: value} of a 2-D mask (module docstring), or None when it is empty."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count < 2:
        return None
    height, width = m.shape
    ys, xs = np.nonzero(m)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = np.column_stack(np.nonzero(labels == k)[::-1]).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(points)
    side = max(w, h, 1.0)  # a one-pixel component: its rectangle has no area
    return {"area": float(len(xs)) / (height * width), "parts": float(count - 1),
            "cx": float(xs.mean() + 0.5) / width, "cy": float(ys.mean() + 0.5) / height,
            "length": float(side) / width, "thickness": float(stats[k, cv2.CC_STAT_AREA]) / side / width}


def _summary(values: list) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "std": float(v.std())}


def fit_prior(masks_by_class: dict) -> dict:
    """The prior of {class: [2-D training masks, or their mask_features]} (module docstring), JSON-ready."""
    classes = {}
    for name, masks in masks_by_class.items():
        found = [m if isinstance(m, dict) or m is None else mask_features(m) for m in masks]
        present = [f for f in found if f is not None]
        entry = {"images": len(found), "present": len(present)}
        if present:
            entry["features"] = {f: _summary([p[f] for p in present]) for f in FEATURES}
        classes[name] = entry
    return {"version": PRIOR_VERSION, "classes": classes}


def expected(class_prior: dict) -> bool:
    """Whether the training masks show the class in nearly every image (EXPECTED_SHARE)."""
    return class_prior.get("present", 0) >= EXPECTED_SHARE * max(class_prior.get("images", 0), 1)


def deviation(features: dict | None, class_prior: dict) -> tuple[float, str]:
    """(how far the mask lies outside the class's prior, in spreads beyond the observed range; the feature that
    lies furthest, "" when none, "missing" for an empty mask of an expected class)."""
    if features is None:
        return (math.inf, "missing") if expected(class_prior) else (0.0, "")
    if "features" not in class_prior:
        return 0.0, ""  # never seen in training: nothing to compare with
    worst, name = 0.0, ""
    for f in FEATURES:
        s = class_prior["features"][f]
        spread = max(s["std"], SPREAD_FLOOR * abs(s["mean"]), 1e-9)
        beyond = max(s["min"] - features[f], features[f] - s["max"], 0.0) / spread
        if beyond > worst:
            worst, name = beyond, f
    return float(worst), name


def fit_uncertainty(scores_by_class: dict) -> dict:
    """{class: {"images", "mean", "std", "max"}} of the uncertainty scores of validation images, JSON-ready."""
    return {name: {"images": len(v), **{k: x for k, x in _summary(v).items() if k != "min"}}
            for name, v in scores_by_class.items() if len(v)}


def uncertainty_limit(class_prior: dict | None, default: float) -> float:
    """The uncertainty score above which a mask of the class is flagged: its validation mean plus UNCERTAIN_Z
    spreads (at least SPREAD_FLOOR of the mean), or default when the prior has no such figures."""
    u = (class_prior or {}).get("uncertainty")
    if not u:
        return float(default)
    return float(u["mean"] + UNCERTAIN_Z * max(u["std"], SPREAD_FLOOR * u["mean"]))
