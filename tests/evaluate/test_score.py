"""evaluate.py / keras_unet.evaluate.score: the same scores from Labelme or mask truth, the report folder, the sweep."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import SAMPLE_DIR
from helpers import CLASSES, blob_run, blob_scene, tiny_run  # noqa: F401 (fixtures)
from keras_unet.cli import evaluate as evaluate_cli
from keras_unet.data.rasterize import rasterize
from keras_unet.errors import ConfigError
from keras_unet.evaluate.score import evaluate as run_evaluation
from keras_unet.evaluate.score import parse_spacing
from keras_unet.imaging.overlay import SHEET_COLOR, caption_height
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predictor import postprocess_settings
from keras_unet.io.labelme import read_labelme
from labelme_factory import document, shape, write_image, write_json


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_UNET_CACHE", str(tmp_path / "cache"))


def _ellipse_polygon(mask):
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float).tolist()


def _labelme_and_mask_folders(root):
    """A Labelme folder of blob scenes, and the same images with their rasterised masks as masks/<class>/."""
    labelme, masked = root / "labelme", root / "masked"
    rng = np.random.default_rng(11)
    for i, (h, w) in enumerate([(72, 100), (90, 60), (64, 64)]):
        image, truth = blob_scene(rng, h, w)
        stem = f"scene_{i}"
        write_image(labelme / f"{stem}.png", image)
        shapes = [shape(name, _ellipse_polygon(truth[..., c])) for c, name in enumerate(CLASSES)
                  if truth[..., c].any()]
        json_path = write_json(labelme / f"{stem}.json", document(shapes, f"{stem}.png", h, w))
        raster, _ = rasterize(read_labelme(json_path), CLASSES)
        write_image(masked / f"{stem}.png", image)
        for c, name in enumerate(CLASSES):
            write_image(masked / "masks" / name / f"{stem}.png", raster[..., c] * np.uint8(255))
    return labelme, masked


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_labelme_and_mask_ground_truth_give_identical_metrics(blob_run, tmp_path):  # noqa: F811
    labelme, masked = _labelme_and_mask_folders(tmp_path)
    predictor = load_predictor(blob_run)
    kwargs = dict(spacing=(0.5, 0.5), sweep=True, log=lambda line: None, progress=False)
    from_json = run_evaluation(predictor, labelme, tmp_path / "a", **kwargs)
    from_masks = run_evaluation(predictor, masked, tmp_path / "b", **kwargs)
    rows_json, rows_masks = _csv(tmp_path / "a" / "metrics.csv"), _csv(tmp_path / "b" / "metrics.csv")
    assert len(rows_json) == 9 and [list(r) for r in rows_json] == [list(r) for r in rows_masks]
    for a, b in zip(rows_json, rows_masks):
        # OpenCV's distance transform may differ in the last float32 bit from one call to the next
        assert {k: float(v) for k, v in a.items() if k not in ("image", "class")} == pytest.approx(
            {k: float(v) for k, v in b.items() if k not in ("image", "class")}, rel=1e-6)
        assert (a["image"], a["class"]) == (b["image"], b["class"])
    assert (tmp_path / "a" / "sweep.csv").read_text() == (tmp_path / "b" / "sweep.csv").read_text()
    assert from_json["images"] == from_masks["images"] == 3
    assert from_json["stray_components"] == from_masks["stray_components"]
    assert from_json["metrics"]["left_clavicle"]["dice"]["mean"] > 0.8  # the blob model does find the blobs


def test_sweep_at_the_run_threshold_matches_the_report(blob_run, tmp_path):  # noqa: F811
    labelme, _ = _labelme_and_mask_folders(tmp_path)
    summary = run_evaluation(load_predictor(blob_run), labelme, tmp_path / "r", sweep=True, classes="rib,left_clavicle",
                             log=lambda line: None, progress=False)
    rows = _csv(tmp_path / "r" / "metrics.csv")
    assert {r["class"] for r in rows} == {"rib", "left_clavicle"} and len(rows) == 6
    sweep = {(r["threshold"], r["class"]): float(r["mean_dice"]) for r in _csv(tmp_path / "r" / "sweep.csv")}
    assert len(sweep) == 18
    for name in ("rib", "left_clavicle"):
        assert sweep[("0.5", name)] == pytest.approx(summary["metrics"][name]["dice"]["mean"])
    assert set(summary["sweep"]["best_threshold"]) == {"rib", "left_clavicle"}


def test_report_on_the_bundled_sample(tiny_run, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "sample"
    data.mkdir()
    stems = ["phantom_000", "phantom_001", "phantom_002"]
    for stem in stems:
        for suffix in (".json", ".png"):
            shutil.copy(SAMPLE_DIR / f"{stem}{suffix}", data / f"{stem}{suffix}")
    out = tmp_path / "report"
    argv = ["--model", str(tiny_run / "model.keras"), "--data", str(data), "--out", str(out), "--spacing", "0.35",
            "--sweep", "--no-tta"]
    assert evaluate_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "left_clavicle" in printed and "HD95 mm" in printed and "threshold" in printed

    rows = _csv(out / "metrics.csv")
    assert len(rows) == len(stems) * len(CLASSES)
    assert {"dice", "iou", "precision", "recall", "hd95", "assd", "hd95_mm", "assd_mm", "stray"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["classes"] == CLASSES
    assert summary["settings"]["postprocess"]["tta"] is False and summary["settings"]["spacing_mm"] == [0.35, 0.35]
    assert set(summary["metrics"]["rib"]) >= {"dice", "hd95", "hd95_mm", "n_images"}
    assert set(summary["stray_components"]) == {"images", "per_class"}
    report = (out / "report.md").read_text()
    assert "## rib" in report and "worst images" in report and "(overlays/phantom_00" in report
    for stem in stems:
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape[1] == 512 and overlay.shape[0] > 512  # original width, legend band below
    _check_contact_sheet(out, rows)
    assert len(_csv(out / "sweep.csv")) == 9 * len(CLASSES)

    assert evaluate_cli.main(argv) == 2  # the report folder exists now
    assert capsys.readouterr().err == (
        f"error: {out}: report folder already exists and holds files (contact_sheet.png, metrics.csv, overlays, ...); "
        "use another --out, or --overwrite to replace them\n")
    (out / "overlays" / "stale.png").write_bytes(b"old")
    assert evaluate_cli.main([*argv[:-2], "--overwrite"]) == 0
    assert not (out / "overlays" / "stale.png").exists() and not (out / "sweep.csv").exists()


def test_the_tta_views_asked_for_are_run_and_reported(tiny_run, tmp_path):  # noqa: F811
    data = tmp_path / "sample"
    data.mkdir()
    for suffix in (".json", ".png"):
        shutil.copy(SAMPLE_DIR / f"phantom_000{suffix}", data / f"phantom_000{suffix}")
    argv = ["--model", str(tiny_run / "model.keras"), "--data", str(data), "--spacing", "0.35"]
    assert evaluate_cli.main([*argv, "--out", str(tmp_path / "flip")]) == 0
    assert evaluate_cli.main([*argv, "--out", str(tmp_path / "views"), "--tta-shift", "0.03",
                              "--tta-scales", "0.9,1.1"]) == 0
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("flip", "views")]
    flip, views = (s["settings"]["postprocess"] for s in summaries)
    assert (flip["tta_shift"], flip["tta_scales"]) == (0.0, [])
    assert (views["tta_shift"], views["tta_scales"]) == (0.03, [0.9, 1.1])
    assert "TTA on (flip, shifts of 0.03, zooms 0.9, 1.1)" in (tmp_path / "views" / "report.md").read_text()
    assert "TTA on;" in (tmp_path / "flip" / "report.md").read_text()
    dice = [s["metrics"]["rib"]["dice"]["mean"] for s in summaries]
    assert dice[0] != dice[1]  # the extra views changed the probabilities the masks come from


def _check_contact_sheet(out, rows):
    """contact_sheet.png: the overlays' thumbnails in a 2 x 2 grid (3 images), lowest mean Dice over classes first."""
    means = {}
    for row in rows:
        means.setdefault(row["image"], []).append(float(row["dice"]))
    order = sorted(means, key=lambda stem: np.mean(means[stem]))
    sheet = cv2.imread(str(out / "contact_sheet.png"), cv2.IMREAD_COLOR)
    gap, tile, caption = 6, 256, caption_height()
    assert sheet.shape == (2 * (tile + caption + gap) + gap, 2 * (tile + gap) + gap, 3)
    for i, stem in enumerate(order):
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"), cv2.IMREAD_COLOR)
        h, w = overlay.shape[:2]
        f = tile / max(h, w)
        nh, nw = round(h * f), round(w * f)
        thumb = cv2.resize(overlay, (nw, nh), interpolation=cv2.INTER_AREA)
        y = gap + (i // 2) * (tile + caption + gap) + (tile - nh) // 2
        x = gap + (i % 2) * (tile + gap) + (tile - nw) // 2
        cell = sheet[y:y + nh, x:x + nw].astype(int)
        assert np.abs(cell - thumb).mean() < 2, stem  # this image's overlay, in this place
    empty = sheet[gap + tile + caption + gap:, gap + tile + gap:]  # the fourth cell holds nothing
    assert (empty == SHEET_COLOR[::-1]).all()


def test_argument_errors(tiny_run, tmp_path):  # noqa: F811
    assert parse_spacing("0.35") == (0.35, 0.35) and parse_spacing("0.2,0.3") == (0.2, 0.3)
    assert parse_spacing(None) is None
    for bad in ("0", "-1", "a", "1,2,3"):
        with pytest.raises(ConfigError):
            parse_spacing(bad)
    predictor = load_predictor(tiny_run)
    with pytest.raises(ConfigError, match="not predicted by the model"):
        run_evaluation(predictor, SAMPLE_DIR, tmp_path / "r", classes="heart", log=lambda line: None)
    with pytest.raises(ConfigError, match="threshold"):
        postprocess_settings(predictor.config.postprocess, threshold=0.0)


def test_dicom_images_of_different_spacing_are_each_scored_in_their_own_millimetres(blob_run, tmp_path):  # noqa: F811
    from helpers import write_dicom

    folder = tmp_path / "dicom"
    spacing = {"coarse": 0.5, "fine": 0.2}  # PixelSpacing of each image, square pixels
    rng = np.random.default_rng(4)
    for stem, mm in spacing.items():
        image, truth = blob_scene(rng, 64, 80)
        write_dicom(folder / f"{stem}.dcm", image.astype(np.uint16) * 257, PixelSpacing=[mm, mm])
        for c, name in enumerate(CLASSES):  # the truth 3 px to the right of the blob: HD95 of a few pixels, not 0
            write_image(folder / "masks" / name / f"{stem}.png", np.roll(truth[..., c], 3, axis=1) * np.uint8(255))
    summary = run_evaluation(load_predictor(blob_run), folder, tmp_path / "r", log=lambda line: None, progress=False)
    assert summary["settings"]["spacing_mm"] == "per image" and summary["settings"]["spacing_from"] == "DICOM"
    rows = _csv(tmp_path / "r" / "metrics.csv")
    assert sorted((r["image"], r["class"]) for r in rows) == sorted((s, c) for s in spacing for c in CLASSES)
    for row in rows:
        mm = spacing[row["image"]]
        assert 1 <= float(row["hd95"]) < float("inf"), row  # a distance the spacing must scale
        assert float(row["hd95_mm"]) == pytest.approx(float(row["hd95"]) * mm, rel=1e-9), row
        assert float(row["assd_mm"]) == pytest.approx(float(row["assd"]) * mm, rel=1e-9), row
