"""The evaluation report: report.md (a table per class, the worst images), the contact sheet, sweep.csv, and the
tables printed on the console."""

from __future__ import annotations

import csv
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from keras_unet.imaging.overlay import contact_sheet
from keras_unet.io.files import write_bytes_atomic

WORST_SHOWN = 5


SHEET_MAX_TILES = 64
# contact_sheet.png: levels rounded to multiples of 4 (at most 2 off) and zlib level 9, which keeps 40 overlays of
# 512 px under 2 MB (4.0 MB as plain RGB PNG at OpenCV's default compression)
SHEET_LEVEL_STEP = 4


OVERLAY_DIR = "overlays"


def image_scores(rows) -> dict:
    """Mean Dice over classes per image, in the order images were met."""
    sums: dict = {}
    for row in rows:
        total, n = sums.get(row["image"], (0.0, 0))
        sums[row["image"]] = (total + row["dice"], n + 1)
    return {image: total / n for image, (total, n) in sums.items()}


def _spacing_text(settings) -> str:
    spacing, origin = settings["spacing_mm"], settings.get("spacing_from")
    if spacing is None:
        return "distances in pixels."
    if spacing == "per image":
        return "spacing per image from the DICOM files (mm figures for the images that have one)."
    return f"spacing {spacing[0]} x {spacing[1]} mm" + (" (from the DICOM files)." if origin == "DICOM" else ".")


def write_sweep(path, rows) -> None:
    """sweep.csv: threshold, class, mean and pooled Dice, pixel tallies."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["threshold", "class", "mean_dice", "pooled_dice", "tp", "fp", "fn"])
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


_LABELS = {"dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall", "hd95": "HD95 (px)",
           "assd": "ASSD (px)", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)"}


def _class_table(entry) -> list[str]:
    lines = ["| metric | mean | std | median | worst | worst image | undefined |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for metric, label in _LABELS.items():
        if metric not in entry:
            continue
        s = entry[metric]
        lines.append(f"| {label} | {_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['median'])} | "
                     f"{_fmt(s['worst'])} | {s['worst_image'] or ''} | {s['n_undefined']} |")
    return lines


def _link(stem) -> str:
    return f"{OVERLAY_DIR}/{quote(stem)}.png"


def _tta_text(post: dict) -> str:
    if not post["tta"]:
        return "off"
    views = ([f"shifts of {post['tta_shift']:g}"] if post.get("tta_shift") else []) + (
        [f"zooms {', '.join(f'{s:g}' for s in post['tta_scales'])}"] if post.get("tta_scales") else [])
    return "on" + (f" (flip, {', '.join(views)})" if views else "")


def write_report(path, summary, rows, tally=None) -> None:
    """report.md: settings, a table per class, the worst images with their overlays, the sweep."""
    post = summary["settings"]["postprocess"]
    lines = [f"# Evaluation of `{summary['model']}`", "",
             f"Data: `{summary['data']}`, {summary['images']} image(s); classes: {', '.join(summary['classes'])}.",
             f"Threshold {post['threshold']}" + (f" (per class: {post['thresholds']})" if post["thresholds"] else "")
             + f"; post-processing {'on' if post['enabled'] else 'off'}; TTA {_tta_text(post)}; "
             + _spacing_text(summary["settings"]),
             f"Images with stray components: {summary['stray_components']['images']}.", ""]
    for name in summary["classes"]:
        entry = summary["metrics"][name]
        lines += [f"## {name}", "", f"{entry['n_images']} image(s); "
                  f"{summary['stray_components']['per_class'][name]} with stray components.", ""]
        lines += _class_table(entry) + [""]
    scores = image_scores(rows)
    worst = sorted(scores, key=scores.get)[:WORST_SHOWN]
    lines += [f"## The {len(worst)} worst images (mean Dice over classes)", "",
              "| image | mean Dice | " + " | ".join(summary["classes"]) + " | overlay |",
              "| --- | ---: | " + " | ".join("---:" for _ in summary["classes"]) + " | --- |"]
    for stem in worst:
        per = {r["class"]: r["dice"] for r in rows if r["image"] == stem}
        lines.append(f"| {stem} | {scores[stem]:.3f} | " + " | ".join(f"{per[c]:.3f}" for c in summary["classes"])
                     + f" | [overlay]({_link(stem)}) |")
    lines += ["", "![contact sheet](contact_sheet.png)", ""]
    if tally:
        lines += ["## Threshold sweep (mean Dice per image)", "", "```", format_sweep(tally), "```",
                  "", "Full table: [sweep.csv](sweep.csv).", ""]
    Path(path).write_text("\n".join(lines))


def write_contact_sheet(out: Path, rows) -> None:
    """contact_sheet.png of the overlays, worst image first, at most SHEET_MAX_TILES of them."""
    scores = image_scores(rows)
    chosen = sorted(scores, key=scores.get)[:SHEET_MAX_TILES]
    if not chosen:
        return
    tiles = []
    for stem in chosen:
        bgr = cv2.imread(str(out / OVERLAY_DIR / f"{stem}.png"), cv2.IMREAD_COLOR)
        tiles.append(cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), _thumb(bgr.shape), interpolation=cv2.INTER_AREA))
    labels = [f"{stem}  Dice {scores[stem]:.3f}" for stem in chosen]
    save_sheet_png(out / "contact_sheet.png", contact_sheet(tiles, labels, tile_size=256))


def save_sheet_png(path, rgb, step: int = SHEET_LEVEL_STEP) -> None:
    """Write an RGB uint8 image atomically as a PNG with its levels rounded to multiples of `step` (255 kept) and
    the strongest zlib compression: colours stay within step / 2 levels, the file shrinks by more than half."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {a.dtype} {a.shape}")
    levels = np.minimum(np.round(a / float(step)) * step, 255).astype(np.uint8)
    ok, data = cv2.imencode(".png", cv2.cvtColor(levels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, data.tobytes())


def _thumb(shape, side: int = 256) -> tuple[int, int]:
    f = min(1.0, side / max(shape[:2]))
    return max(1, round(shape[1] * f)), max(1, round(shape[0] * f))


def format_table(summary) -> str:
    """A short per-class table of the summary for the console."""
    mm = summary["settings"]["spacing_mm"] is not None
    hd = "hd95_mm" if mm else "hd95"
    head = f"{'class':<20} {'Dice':>13} {'IoU':>6} {'HD95 ' + ('mm' if mm else 'px'):>9} {'stray':>7}"
    lines = [head, "-" * len(head)]
    for name in summary["classes"]:
        m = summary["metrics"][name]
        dice = f"{_fmt(m['dice']['mean'])}+-{_fmt(m['dice']['std'])}"
        stray = f"{summary['stray_components']['per_class'][name]}/{m['n_images']}"
        lines.append(f"{name:<20} {dice:>13} {_fmt(m['iou']['mean']):>6} {_fmt(m[hd]['mean'], 2):>9} {stray:>7}")
    return "\n".join(lines)


def format_sweep(tally) -> str:
    """Mean Dice per class against the threshold, as a console table."""
    width = max(10, *(len(c) for c in tally.classes))
    lines = [f"{'threshold':<10} " + " ".join(f"{c:>{width}}" for c in tally.classes)]
    means = tally.dice_sum / max(tally.images, 1)
    for i, t in enumerate(tally.thresholds):
        lines.append(f"{t:<10} " + " ".join(f"{means[i, c]:>{width}.4f}" for c in range(len(tally.classes))))
    return "\n".join(lines)
