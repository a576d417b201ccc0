"""evaluate.py's pictures and split handling: --errors overlays, the contact sheet's size, the training-split warning,
--split val, and curves.png (train/history.plot_curves)."""

import csv
import json
import math
import shutil

import cv2
import numpy as np
import pytest

from helpers import CLASSES, blob_run, blob_scene  # noqa: F401 (fixtures)
from keras_unet.cli import evaluate as evaluate_cli
from keras_unet.evaluate.report import SHEET_LEVEL_STEP, write_contact_sheet
from keras_unet.imaging.overlay import ERROR_ALPHA, ERROR_COLORS, contact_sheet, draw_overlay, save_rgb
from keras_unet.train import history as history_module
from keras_unet.train.history import best_epoch, cosine_lr, epoch_learning_rates, plot_curves, run_schedule
from labelme_factory import write_image

STEMS = [f"scene_{i}" for i in range(5)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_UNET_CACHE", str(tmp_path / "cache"))


def _data(root, stems=STEMS):
    """An image + masks/<class>/ folder of blob scenes."""
    rng = np.random.default_rng(5)
    for stem in stems:
        image, truth = blob_scene(rng, 64, 64)
        write_image(root / f"{stem}.png", image)
        for c, name in enumerate(CLASSES):
            write_image(root / "masks" / name / f"{stem}.png", truth[..., c] * np.uint8(255))
    return root


def _run_with_split(blob_run, folder, train, val):  # noqa: F811
    shutil.copytree(blob_run, folder)
    (folder / "split.json").write_text(json.dumps({"train": train, "val": val}))
    return folder


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- the training-split warning and --split val ---------------------------------------------------------------


def test_warns_once_naming_training_images(blob_run, tmp_path, capsys):  # noqa: F811
    run = _run_with_split(blob_run, tmp_path / "run", train=["scene_0", "scene_1", "scene_3", "other"],
                          val=["scene_2", "scene_4"])
    data = _data(tmp_path / "data")
    assert evaluate_cli.main(["--model", str(run / "model.keras"), "--data", str(data),
                              "--out", str(tmp_path / "r")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert err == [f"warning: 3 of the 5 image(s) are in the model's training list ({run / 'split.json'}): "
                   "scene_0, scene_1, scene_3; their scores overstate the model (--split val scores the run's "
                   "validation images only)"]
    assert {r["image"] for r in _csv(tmp_path / "r" / "metrics.csv")} == set(STEMS)  # all of them still scored


def test_warning_shows_at_most_three_stems(blob_run, tmp_path, capsys):  # noqa: F811
    run = _run_with_split(blob_run, tmp_path / "run", train=STEMS, val=[])
    assert evaluate_cli.main(["--model", str(run), "--data", str(_data(tmp_path / "data")),
                              "--out", str(tmp_path / "r")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(err) == 1 and err[0].startswith("warning: 5 of the 5 image(s)")
    assert ": scene_0, scene_1, scene_2, ...; " in err[0] and "scene_3" not in err[0]


def test_no_warning_without_split_or_overlap(blob_run, tmp_path, capsys):  # noqa: F811
    data = _data(tmp_path / "data")
    assert not (blob_run / "split.json").exists()  # like an export folder
    assert evaluate_cli.main(["--model", str(blob_run), "--data", str(data), "--out", str(tmp_path / "a")]) == 0
    assert "warning" not in capsys.readouterr().err
    run = _run_with_split(blob_run, tmp_path / "run", train=["elsewhere_0"], val=["elsewhere_1"])
    assert evaluate_cli.main(["--model", str(run), "--data", str(data), "--out", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_split_val_scores_exactly_the_validation_images(blob_run, tmp_path, capsys):  # noqa: F811
    run = _run_with_split(blob_run, tmp_path / "run", train=["scene_0", "scene_1", "scene_3"],
                          val=["scene_4", "scene_2", "not_in_data"])
    out = tmp_path / "r"
    assert evaluate_cli.main(["--model", str(run), "--data", str(_data(tmp_path / "data")), "--out", str(out),
                              "--split", "val"]) == 0
    assert "warning" not in capsys.readouterr().err
    rows = _csv(out / "metrics.csv")
    assert sorted({r["image"] for r in rows}) == ["scene_2", "scene_4"] and len(rows) == 2 * len(CLASSES)
    assert json.loads((out / "summary.json").read_text())["images"] == 2
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == ["scene_2", "scene_4"]


def test_split_val_refused_without_split_json(blob_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "r"
    assert evaluate_cli.main(["--model", str(blob_run), "--data", str(_data(tmp_path / "data")), "--out", str(out),
                              "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --split val: {blob_run / 'model.keras'} has no split.json beside it, so its validation "
                   "images are unknown\n")
    assert not (out / "metrics.csv").exists()


# -- --errors ----------------------------------------------------------------------------------------------------


def test_errors_option_writes_error_overlays(blob_run, tmp_path):  # noqa: F811
    data = _data(tmp_path / "data", ["scene_0"])
    # a truth that the blob model cannot find: the whole image is one class, so most of it is a false negative
    full = np.full((64, 64), 255, np.uint8)
    write_image(data / "masks" / "rib" / "scene_0.png", full)
    out = tmp_path / "r"
    assert evaluate_cli.main(["--model", str(blob_run), "--data", str(data), "--out", str(out), "--errors"]) == 0
    picture = cv2.cvtColor(cv2.imread(str(out / "overlays" / "scene_0.png")), cv2.COLOR_BGR2RGB)[:64].astype(int)
    grey = cv2.imread(str(data / "scene_0.png"), cv2.IMREAD_GRAYSCALE).astype(float)
    lo, hi = np.percentile(grey, [1, 99])
    grey = np.clip(np.round((grey - lo) * 255 / (hi - lo)), 0, 255)
    fn = np.round(grey[..., None] * (1 - ERROR_ALPHA) + np.array(ERROR_COLORS["FN"]) * ERROR_ALPHA)
    share = (np.abs(picture - fn).max(axis=-1) <= 1).mean()
    assert share > 0.5  # the rib's misses: most of the image (the other classes' blobs are small)


# -- the contact sheet ---------------------------------------------------------------------------------------


def _xray_like(rng, size):
    """A smooth bright-chest-like gradient with film noise, as grey uint16."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 20000 + 25000 * np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.5) ** 2 / 0.2))
    return np.clip(base + rng.normal(0, 1200, (size, size)), 0, 65535).astype(np.uint16)


def test_contact_sheet_stays_small_and_true_to_the_overlays(tmp_path):
    """4 overlays of 512 px: at most 2 MB / 40 per image (the plain RGB PNG of the same sheet is over twice that),
    and every sheet pixel within half a level step of the unrounded sheet."""
    rng = np.random.default_rng(0)
    out = tmp_path / "report"
    (out / "overlays").mkdir(parents=True)
    rows, tiles = [], []
    for i in range(4):
        image = _xray_like(rng, 512)
        truth = np.zeros((512, 512, 1), np.uint8)
        cv2.ellipse(truth, (200 + 20 * i, 256), (120, 60), 30, 0, 360, 1, -1)
        pred = np.roll(truth, 15, axis=1)
        picture = draw_overlay(image, pred, truth, classes=["rib"], title=f"img_{i}", errors=i % 2 == 1)
        save_rgb(out / "overlays" / f"img_{i}.png", picture)
        rows.append({"image": f"img_{i}", "class": "rib", "dice": 0.1 * i})
        tiles.append(cv2.resize(picture, (round(512 * 256 / picture.shape[0]), 256), interpolation=cv2.INTER_AREA))
    write_contact_sheet(out, rows)
    size = (out / "contact_sheet.png").stat().st_size
    assert size <= 4 * 2_000_000 / 40, size
    sheet = cv2.cvtColor(cv2.imread(str(out / "contact_sheet.png")), cv2.COLOR_BGR2RGB).astype(int)
    labels = [f"img_{i}  Dice {0.1 * i:.3f}" for i in range(4)]
    plain = contact_sheet(tiles, labels, tile_size=256)
    assert sheet.shape == plain.shape
    assert np.abs(sheet - plain).max() <= SHEET_LEVEL_STEP // 2 + 1  # +1: PNG round trip of the tiles
    ok, rgb_png = cv2.imencode(".png", cv2.cvtColor(plain, cv2.COLOR_RGB2BGR))
    assert len(rgb_png) > 2 * size  # what the sheet used to cost


# -- curves.png --------------------------------------------------------------------------------------------------


def _history(with_lr=False):
    rows = []
    for epoch, (vd, l, r) in enumerate([(0.3, 0.2, 0.4), (0.7, 0.6, 0.8), (math.nan, math.nan, math.nan),
                                        (0.6, 0.5, 0.7)]):
        row = {"epoch": float(epoch), "loss": 1.0 - 0.1 * epoch, "val_loss": 1.1 - 0.1 * epoch, "dice": 0.2 * epoch,
               "val_dice": vd, "val_dice_left": l, "val_dice_right": r}
        if with_lr:
            row["learning_rate"] = 0.01 / (epoch + 1)
        rows.append(row)
    return rows


def test_cosine_learning_rate_by_hand():
    # lr 0.01, 2 epochs of 2 steps, alpha 0.05: 0.01 * (0.95 * 0.5 * (1 + cos(pi * step / 4)) + 0.05)
    assert cosine_lr(0.01, 4, 0) == pytest.approx(0.01)
    assert cosine_lr(0.01, 4, 2) == pytest.approx(0.01 * (0.475 + 0.05))
    assert cosine_lr(0.01, 4, 4) == pytest.approx(0.0005)
    assert cosine_lr(0.01, 4, 9) == pytest.approx(0.0005)  # stays at the floor
    history = [{"epoch": 0.0}, {"epoch": 1.0}]
    assert epoch_learning_rates(history, (0.01, 2, 2)) == pytest.approx([0.00525, 0.0005])
    assert epoch_learning_rates(history) is None
    assert epoch_learning_rates(_history(with_lr=True)) == pytest.approx([0.01, 0.005, 0.01 / 3, 0.0025])


def test_best_epoch_is_the_highest_finite_validation_dice():
    assert best_epoch(_history()) == 2  # 1-based; the NaN epoch is not "best"
    assert best_epoch([{"epoch": 0.0, "val_dice": math.nan}]) is None
    assert best_epoch([{"epoch": 0.0, "val_dice": 0.5}, {"epoch": 1.0, "val_dice": 0.5}]) == 1


def test_run_schedule_from_the_run_folder(tmp_path):
    assert run_schedule(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 0.002, "epochs": 3, "batch_size": 8,
                                                      "crops": {"classes": []}}))
    (tmp_path / "split.json").write_text(json.dumps({"train": [f"s{i}" for i in range(17)], "val": []}))
    assert run_schedule(tmp_path) == (0.002, 3, 3)  # ceil(17 / 8) steps
    (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 0.002, "epochs": 3, "batch_size": 8,
                                                      "crops": {"classes": ["rib"]}}))
    assert run_schedule(tmp_path) is None  # crop training: the steps are not at hand


def _figure(monkeypatch, history, path, *args):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curves(history, path, *args)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return figures[0]


def test_curves_show_classes_learning_rate_and_best_epoch(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 0.01, "epochs": 4, "batch_size": 2}))
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "val": ["d"]}))
    fig = _figure(monkeypatch, _history(), tmp_path / "curves.png")  # the old call: rows and a path
    loss, dice, lr = fig.axes
    labels = [line.get_label() for line in dice.get_lines()]
    assert {"validation left", "validation right", "best epoch 2 (0.700)"} <= set(labels)
    right = next(line for line in dice.get_lines() if line.get_label() == "validation right")
    np.testing.assert_allclose(right.get_ydata(), [0.4, 0.8, math.nan, 0.7])
    marker = next(line for line in dice.get_lines() if line.get_label().startswith("best epoch"))
    assert list(marker.get_xdata()) == [2] and list(marker.get_ydata()) == [0.7]
    for ax in (loss, dice, lr):  # the dotted line at the best epoch in every panel
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())
    rate = lr.get_lines()[0].get_ydata()  # 2 steps per epoch (3 images, batch 2), 8 steps in all
    np.testing.assert_allclose(rate, [cosine_lr(0.01, 8, 2 * (e + 1)) for e in range(4)])


def test_curves_without_schedule_leave_the_learning_rate_out(tmp_path, monkeypatch):
    history = [{k: v for k, v in row.items() if not k.startswith("val_dice_")} for row in _history()]
    fig = _figure(monkeypatch, history, tmp_path / "curves.png")
    assert len(fig.axes) == 2  # no config.json / split.json beside it, no lr column: no learning-rate panel
    assert not [line for line in fig.axes[1].get_lines() if line.get_label().startswith("validation ")
                and line.get_label() != "validation dice"]  # one class: no per-class lines
    fig = _figure(monkeypatch, _history(with_lr=True), tmp_path / "c2.png")
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [0.01, 0.005, 0.01 / 3, 0.0025])
    fig = _figure(monkeypatch, history, tmp_path / "c3.png", (0.01, 4, 1))
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), cosine_lr(0.01, 4, [1, 2, 3, 4]))
    assert history_module.LR_ALPHA == 0.05
