"""Score a trained model against ground truth at each image's original resolution, and write a report folder.

The report folder holds metrics.csv (a row per image and class), summary.json (statistics per class, the settings
used, stray-component counts), report.md (a table per class, the five worst images), overlays/<stem>.png,
contact_sheet.png and, with a threshold sweep, sweep.csv. Images are streamed: one image's probabilities are in
memory at a time; the sweep keeps per-threshold tallies only. With errors=True the overlays colour each class's true
positives, false positives and false negatives instead of the plain prediction fill.

The model's run folder says in split.json which images trained it: scoring any of them draws a one-line warning,
and split="val" scores only the run's validation images (refused when the model has no split.json).

A predicted mask has stray components when it has more 8-connected components than the ground truth of that
image and class.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from keras_unet.data.samples import prepare_samples
from keras_unet.errors import ConfigError, DataError
from keras_unet.imaging.metrics import OVERLAP_METRICS, confusion, dice_from_counts, score_masks, summarize
from keras_unet.imaging.overlay import draw_overlay, save_rgb
from keras_unet.imaging.postprocess import clean_masks, count_components, stray_components
from keras_unet.infer.predictor import Predictor, select_classes
from keras_unet.io import images
from keras_unet.io.files import prepare_out_dir
from keras_unet.progress import Progress
from keras_unet.run_folder import SPLIT_FILE
from keras_unet.evaluate.report import (OVERLAY_DIR, format_sweep, format_table, write_contact_sheet,
                                        write_report, write_sweep)

SWEEP_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
OUTPUT_FILES = ("metrics.csv", "summary.json", "report.md", "sweep.csv", "contact_sheet.png")
CSV_METRICS = OVERLAP_METRICS + ("hd95", "assd", "hd95_mm", "assd_mm")


def parse_spacing(text) -> tuple[float, float] | None:
    """Pixel spacing in mm from '0.35' or '0.35,0.3' (row, column); None for None or empty."""
    if text is None or str(text).strip() == "":
        return None
    try:
        values = [float(v) for v in str(text).replace(" ", ",").split(",") if v]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--spacing must be one or two positive numbers in mm (row,column), got {text!r}")
    return values[0], values[1]


def image_spacings(samples, override=None) -> list[tuple[float, float] | None]:
    """Pixel spacing (row, column) in mm per sample: the override when given, else the sample's own (DICOM) one."""
    return [override if override is not None else getattr(sample, "spacing", None) for sample in samples]


def spacing_setting(override, spacings) -> tuple[list | str | None, str | None]:
    """(spacing_mm, spacing_from) for summary.json: one [row, col] pair, "per image", or None; and its origin."""
    if override is not None:
        return list(override), "--spacing"
    found = {tuple(s) for s in spacings if s is not None}
    if not found:
        return None, None
    if len(found) == 1 and all(s is not None for s in spacings):
        return list(found.pop()), "DICOM"
    return "per image", "DICOM"



SPLITS = ("all", "val")
STEMS_SHOWN = 3


def find_split(source) -> Path | None:
    """The split.json of a model's run: beside a model file, or in (or beside) a model folder; None without one."""
    path = Path(source)
    candidates = [path / SPLIT_FILE, path.parent / SPLIT_FILE] if path.is_dir() else [path.parent / SPLIT_FILE]
    return next((c for c in candidates if c.is_file()), None)


def read_split(path: Path) -> dict:
    """{"train": [stems], "val": [stems]} of a split.json."""
    try:
        values = json.loads(Path(path).read_text())
        return {key: [str(stem) for stem in values.get(key, [])] for key in ("train", "val")}
    except (OSError, ValueError, AttributeError, TypeError):
        raise DataError(path, "not a valid split file (expected \"train\" and \"val\" lists of stems)") from None


def _stems_text(stems) -> str:
    shown = ", ".join(stems[:STEMS_SHOWN])
    return shown + (", ..." if len(stems) > STEMS_SHOWN else "")


def training_overlap_warning(split_path, split: dict, samples) -> str | None:
    """The one-line warning when images of the data folder trained the model (matched by stem), else None."""
    trained = set(split["train"])
    overlap = [s.stem for s in samples if s.stem in trained]
    if not overlap:
        return None
    return (f"warning: {len(overlap)} of the {len(samples)} image(s) are in the model's training list "
            f"({split_path}): {_stems_text(overlap)}; their scores overstate the model (--split val scores "
            "the run's validation images only)")


def select_split(samples, split, source) -> list:
    """The samples to score: all of them (a warning on stderr when some trained the model), or split="val"'s."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    path = find_split(source)
    if split == "all":
        warning = path and training_overlap_warning(path, read_split(path), samples)
        if warning:
            print(warning, file=sys.stderr)
        return samples
    if path is None:
        raise ConfigError(f"--split val: {source} has no {SPLIT_FILE} beside it, so its validation images are unknown")
    val = set(read_split(path)["val"])
    chosen = [s for s in samples if s.stem in val]
    if not chosen:
        raise ConfigError(f"--split val: none of the {len(samples)} image(s) is among the {len(val)} validation "
                          f"image(s) of {path}")
    return chosen


def read_truth(sample) -> np.ndarray:
    """(H, W, C) uint8 0/1 ground truth of a prepared sample."""
    return np.stack([(images.read_image(p) > 0).astype(np.uint8) for p in sample.mask_paths], axis=-1)


def clear_report(out: Path) -> None:
    """Delete the files an earlier evaluation wrote into a report folder."""
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    if (out / OVERLAY_DIR).is_dir():
        shutil.rmtree(out / OVERLAY_DIR)


class Sweep:
    """Per threshold and class: pooled tp/fp/fn tallies and the running sum of per-image Dice."""

    def __init__(self, classes, thresholds=SWEEP_THRESHOLDS):
        self.classes, self.thresholds = list(classes), tuple(thresholds)
        self.tallies = np.zeros((len(self.thresholds), len(self.classes), 3), dtype=np.int64)
        self.dice_sum = np.zeros((len(self.thresholds), len(self.classes)))
        self.images = 0

    def add(self, probs, truth, all_classes, channels, settings) -> None:
        """Tally one image's probabilities (all the model's classes) against its ground truth."""
        for i, t in enumerate(self.thresholds):
            at_t = dataclasses.replace(settings, threshold=float(t), thresholds={})
            masks = clean_masks(probs, all_classes, at_t)[..., channels]
            for c in range(len(self.classes)):
                tp, fp, fn, _ = confusion(masks[..., c], truth[..., c])
                self.tallies[i, c] += (tp, fp, fn)
                self.dice_sum[i, c] += dice_from_counts(tp, fp, fn)
        self.images += 1

    def rows(self) -> list[dict]:
        """One row per threshold and class: mean per-image Dice and Dice of the pooled pixels."""
        rows = []
        for i, t in enumerate(self.thresholds):
            for c, name in enumerate(self.classes):
                tp, fp, fn = (int(v) for v in self.tallies[i, c])
                rows.append({"threshold": t, "class": name, "mean_dice": self.dice_sum[i, c] / max(self.images, 1),
                             "pooled_dice": dice_from_counts(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn})
        return rows

    def best(self) -> dict:
        """The threshold with the highest mean Dice, per class."""
        means = self.dice_sum / max(self.images, 1)
        return {name: float(self.thresholds[int(np.argmax(means[:, c]))]) for c, name in enumerate(self.classes)}


def score_image(stem, pred, truth, classes, spacing) -> list[dict]:
    """Metric rows of one image (one per class) with component and stray-component counts."""
    rows = score_masks(pred, truth, classes, spacing)
    for c, row in enumerate(rows):
        expected = count_components(truth[..., c])
        row.update(image=stem, components=count_components(pred[..., c]), truth_components=expected,
                   stray=stray_components(pred[..., c], expected))
    return rows


def evaluate(predictor: Predictor, data_dir, out, settings=None, spacing=None, sweep: bool = False,
             classes=None, overwrite: bool = False, log=print, progress: bool = True, errors: bool = False,
             split: str = "all") -> dict:
    """Score the predictor on a Labelme or image + mask folder and write the report folder; returns the summary.

    Distances in mm use `spacing` (row, column) for every image when given, else each DICOM image's own spacing.
    errors: TP / FP / FN overlays. split: "all" the folder's images, or "val" those of the run's validation list.
    """
    settings = predictor.config.postprocess if settings is None else settings
    classes = select_classes(predictor, classes)
    channels = [predictor.classes.index(c) for c in classes]
    out = prepare_out_dir(out, overwrite, "report folder")
    config = predictor.config
    samples = prepare_samples(data_dir, classes, cache_dir=config.cache_dir or None,
                              line_width=config.line_width, log=log)
    samples = select_split(samples, split, predictor.source)
    clear_report(out)
    (out / OVERLAY_DIR).mkdir()
    tally = Sweep(classes) if sweep else None
    rows = []
    spacings = image_spacings(samples, spacing)
    bar = Progress(len(samples)) if progress else None
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv_writer(handle, any(s is not None for s in spacings))
        for sample, image_spacing in zip(samples, spacings):
            image = images.read_image(sample.image_path)
            truth = read_truth(sample)
            probs, masks = predictor.segment(image, settings)
            masks = masks[..., channels]
            image_rows = score_image(sample.stem, masks, truth, classes, image_spacing)
            writer.writerows(image_rows)
            handle.flush()
            rows.extend(image_rows)
            if tally:
                tally.add(probs, truth, predictor.classes, channels, settings)
            picture = draw_overlay(image, masks, truth, classes, title=sample.stem, errors=errors)
            save_rgb(out / OVERLAY_DIR / f"{sample.stem}.png", picture)
            if bar:
                bar.step()
    if bar:
        bar.close()
    summary = build_summary(rows, classes, predictor, data_dir, settings, spacing_setting(spacing, spacings),
                            len(samples))
    if tally:
        summary["sweep"] = {"thresholds": list(tally.thresholds), "best_threshold": tally.best()}
        write_sweep(out / "sweep.csv", tally.rows())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    write_report(out / "report.md", summary, rows, tally)
    write_contact_sheet(out, rows)
    log(format_table(summary))
    if tally:
        log(format_sweep(tally))
    log(f"report: {out / 'report.md'}")
    return summary


def csv_writer(handle, with_mm: bool) -> csv.DictWriter:
    """A DictWriter for metrics.csv rows, header written."""
    metrics = [m for m in CSV_METRICS if with_mm or not m.endswith("_mm")]
    fields = ["image", "class", *metrics, "components", "truth_components", "stray"]
    writer = csv.DictWriter(handle, fields, extrasaction="ignore")
    writer.writeheader()
    return writer



def build_summary(rows, classes, predictor, data_dir, settings, spacing, count) -> dict:
    """summary.json content: statistics per class, settings used (spacing: spacing_setting's pair), stray components."""
    spacing_mm, spacing_from = spacing
    stray = {name: sum(1 for r in rows if r["class"] == name and r["stray"] > 0) for name in classes}
    stray_images = len({r["image"] for r in rows if r["stray"] > 0})
    config = predictor.config
    return {
        "model": predictor.source,
        "data": str(data_dir),
        "images": count,
        "classes": classes,
        "settings": {
            "postprocess": dataclasses.asdict(settings),
            "spacing_mm": spacing_mm,
            "spacing_from": spacing_from,
            "image_size": config.image_size,
            "line_width": config.line_width,
            "normalization": dataclasses.asdict(config.normalization),
        },
        "metrics": _json_safe(summarize(rows, classes)),
        "stray_components": {"images": stray_images, "per_class": stray},
    }


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


