"""Train, predict and evaluate through the command lines on the bundled sample; every score the run folder and the
report folder hold is recomputed here, in numpy, from files other commands wrote.

Ground truth comes from `python -m keras_unet.masks` (the rasteriser has its own hand-value tests in tests/data/),
predictions from `predict.py`'s OUT/<class>/<stem>.png; both are read with OpenCV, not the project's image reader.
Dice is 2|P&T| / (|P| + |T|), 1.0 when both masks are empty (the convention tests/imaging pins).
"""

import csv
import json
import shutil

import cv2
import numpy as np

from conftest import SAMPLE_DIR
from keras_unet.cli import evaluate as evaluate_cli
from keras_unet.cli import masks as masks_cli
from keras_unet.cli import predict as predict_cli
from keras_unet.cli import train as train_cli

EPOCHS = 4
# 64 px, depth 2, 4 filters, batch 2 and a high learning rate: every class reaches a validation Dice near 0.6 or
# more in 4 epochs (about 25 s of fitting on 2 CPU cores, much the same on 1), so a swap of two classes shows
TRAIN_FLAGS = ["--image-size", "64", "--depth", "2", "--base-filters", "4", "--batch-size", "2",
               "--learning-rate", "0.03", "--epochs", str(EPOCHS), "--no-augment", "--precision", "float32",
               "--checkpoint", "best", "--early-stopping", "0"]


def _read_mask(path):
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None, f"{path} is missing or not an image"
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}, f"{path} is not a 0/255 mask"
    return mask > 0


def _dice(pred, truth):
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def _csv_rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_predict_evaluate_scores_agree_with_numpy(tmp_path):
    """metrics.csv's Dice per image and class, summary.json's mean Dice per class and metrics.json's validation
    Dice (that of history.csv's best epoch, the one kept) all match an independent count of pixels."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_cli.main(["--data", str(SAMPLE_DIR), "--out", str(run), "--cache-dir", str(cache), *TRAIN_FLAGS]) == 0

    # b. metrics.json is the best epoch of history.csv (checkpoint "best"), and counts every epoch
    history = _csv_rows(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    classes = json.loads((run / "config.json").read_text())["classes"]
    assert classes == (SAMPLE_DIR / "labels.txt").read_text().split()
    assert [int(row["epoch"]) for row in history] == list(range(EPOCHS))
    assert metrics["epochs_run"] == len(history) == EPOCHS
    best = max(history, key=lambda row: float(row["val_dice"]))
    assert abs(metrics["val_dice"] - float(best["val_dice"])) <= 1e-4, (metrics["val_dice"], best)
    for name in classes:
        assert abs(metrics["val_dice_per_class"][name] - float(best[f"val_dice_{name}"])) <= 1e-4, name

    # the run's validation images, Labelme JSON and PNG side by side, as a folder of their own
    split = json.loads((run / "split.json").read_text())
    stems = split["val"]
    assert stems and not set(stems) & set(split["train"])
    data = tmp_path / "val"
    data.mkdir()
    for stem in stems:
        shutil.copy(SAMPLE_DIR / f"{stem}.json", data)
        shutil.copy(SAMPLE_DIR / f"{stem}.png", data)

    truth_dir, pred_dir, report = tmp_path / "truth", tmp_path / "pred", tmp_path / "report"
    assert masks_cli.main([str(data), "--classes", ",".join(classes), "--out", str(truth_dir)]) == 0
    assert predict_cli.main(["--model", str(run), "--input", str(data), "--out", str(pred_dir)]) == 0
    assert evaluate_cli.main(["--model", str(run), "--data", str(data), "--out", str(report)]) == 0

    expected = {}
    for stem in stems:
        height, width = cv2.imread(str(data / f"{stem}.png"), cv2.IMREAD_UNCHANGED).shape[:2]
        for name in classes:
            truth, pred = _read_mask(truth_dir / name / f"{stem}.png"), _read_mask(pred_dir / name / f"{stem}.png")
            assert truth.shape == pred.shape == (height, width), (stem, name)  # scored at the original resolution
            expected[stem, name] = _dice(pred, truth)
    for name in classes:  # a model that found nothing would score 0 everywhere, and a class swap would go unseen
        assert max(expected[stem, name] for stem in stems) > 0.3, f"the tiny model learnt no {name}"
    assert len({round(v, 6) for v in expected.values()}) > len(classes)

    # a. metrics.csv: one row per image and class, each Dice that of the predicted masks against the ground truth
    rows = _csv_rows(report / "metrics.csv")
    got = {(row["image"], row["class"]): float(row["dice"]) for row in rows}
    assert len(rows) == len(got) == len(stems) * len(classes)
    assert set(got) == set(expected)
    wrong = {key: (got[key], want) for key, want in expected.items() if abs(got[key] - want) > 1e-6}
    assert not wrong, f"metrics.csv Dice (got, numpy) that differ: {wrong}"

    # c. summary.json: the mean over images of the per-image Dice, per class
    summary = json.loads((report / "summary.json").read_text())
    assert summary["images"] == len(stems) and summary["classes"] == classes
    for name in classes:
        entry = summary["metrics"][name]
        assert entry["n_images"] == len(stems)
        mean = float(np.mean([expected[stem, name] for stem in stems]))
        assert abs(entry["dice"]["mean"] - mean) <= 1e-6, (name, entry["dice"]["mean"], mean)
