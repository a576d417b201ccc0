"""A quality flag for every predicted mask, so that a user sees which masks to check first (OUT/flags.csv).

Two signals per image and class, each scaled so that 1 is the point where a mask gets flagged:

- uncertainty: the ranking's class score (infer.ranking: entropy and disagreement of the plain and mirrored
  passes of the first model, 0 sure to 1 unsure), over the class's limit: its mean plus 3 spreads on the run's
  validation images (imaging.shape_prior.uncertainty_limit), or UNCERTAIN without such figures;
- shape deviation: how far the mask's area, part count, centroid, length and thickness lie beyond what the
  training masks showed (imaging.shape_prior, read from the run's shape_prior.json), over PRIOR_MARGIN.

risk is the larger of the two; flag is "check" when it is above 1, else "ok"; reason names what exceeded.
Without a shape prior (an export folder, a run trained before it existed) only the uncertainty counts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from keras_unet.errors import DataError
from keras_unet.imaging.shape_prior import FEATURES, deviation, mask_features, uncertainty_limit
from keras_unet.infer.ranking import score_image
from keras_unet.io import images
from keras_unet.io.files import write_bytes_atomic
from keras_unet.run_folder import FLAGS_FILE, SHAPE_PRIOR_FILE

UNCERTAIN = 0.35  # class score above which a mask is flagged as uncertain when the prior has no validation figures
PRIOR_MARGIN = 1.0  # spreads beyond the training masks' range at which a mask is flagged as misshapen
COLUMNS = ("image", "class", "flag", "risk", "reason", "uncertainty", "shape_deviation", "shape_feature", *FEATURES)


def read_prior(source) -> dict | None:
    """The shape prior beside a model (its run folder's shape_prior.json), or None when there is none."""
    source = Path(source)
    path = (source if source.is_dir() else source.parent) / SHAPE_PRIOR_FILE
    if not path.is_file():
        return None
    try:
        prior = json.loads(path.read_text())
        prior["classes"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(path, f"is not a shape prior ({exc})") from exc
    return prior


def mask_flag(uncertainty: float, features: dict | None, class_prior: dict | None) -> dict:
    """One mask's flag row (without image and class) from its uncertainty, features and class prior."""
    shape, feature = deviation(features, class_prior) if class_prior else (0.0, "")
    parts = [("uncertain", uncertainty / uncertainty_limit(class_prior, UNCERTAIN)),
             (f"shape: {feature}", shape / PRIOR_MARGIN)]
    risk = max(value for _, value in parts)
    row = {"flag": "check" if risk > 1.0 else "ok", "risk": risk,
           "reason": "; ".join(name for name, value in parts if value > 1.0),
           "uncertainty": uncertainty, "shape_deviation": shape, "shape_feature": feature}
    row.update({f: (features or {}).get(f, 0.0) for f in FEATURES})
    return row


class FlagRecorder:
    """Called with each predicted image's (path, masks, classes): collects one flag row per class."""

    def __init__(self, predictor, tta: bool | None = None, prior: dict | None = None):
        self.predictor, self.tta = predictor, tta
        self.prior = read_prior(predictor.source) if prior is None else prior
        self.rows: list[dict] = []

    def __call__(self, path, masks, classes) -> None:
        scores = score_image(self.predictor, images.read_image(path), self.tta)
        known = (self.prior or {}).get("classes", {})
        for c, name in enumerate(classes):
            row = mask_flag(scores[name], mask_features(masks[..., c]), known.get(name))
            self.rows.append({"image": Path(path).name, "class": name, **row})

    def write(self, out) -> Path:
        """Write OUT/flags.csv, the riskiest mask first, keeping the rows of images an earlier, interrupted run of
        the same folder flagged and this one did not redo; returns its path."""
        path = Path(out) / FLAGS_FILE
        done = {row["image"] for row in self.rows}
        earlier = []
        if path.is_file():
            earlier = [{**row, "risk": float(row["risk"])} for row in csv.DictReader(io.StringIO(path.read_text()))
                       if row.get("image") not in done]
        write_bytes_atomic(path, flags_csv(earlier + self.rows).encode())
        return path


def flags_csv(rows) -> str:
    """The flag rows as CSV text, the highest risk first (ties in image, class order)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (-r["risk"], r["image"], r["class"])):
        writer.writerow({k: _text(v) for k, v in row.items()})
    return buffer.getvalue()


def _text(value) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)
