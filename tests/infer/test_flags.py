"""keras_unet.infer.flags: the quality flag of each predicted mask (uncertainty and shape prior), and flags.csv."""

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import CLASSES, blob_run, blob_scene  # noqa: F401 (fixtures)
from keras_unet.cli import predict as predict_cli
from keras_unet.errors import DataError
from keras_unet.imaging.shape_prior import fit_prior, mask_features
from keras_unet.imaging.shape_prior import uncertainty_limit
from keras_unet.infer.flags import PRIOR_MARGIN, UNCERTAIN, flags_csv, mask_flag, read_prior
from keras_unet.infer.load import load_predictor
from keras_unet.io import images
from keras_unet.run_folder import FLAGS_FILE, SHAPE_PRIOR_FILE
from keras_unet.train.shape import add_uncertainty, shape_prior, write_shape_prior
from labelme_factory import write_image


def square(size=40, top=10, side=10) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[top:top + side, top:top + side] = 1
    return m


def test_mask_flag_scales_both_signals_to_one_at_the_flag():
    entry = fit_prior({"c": [square(top=t) for t in (8, 10, 12)]})["classes"]["c"]
    ok = mask_flag(0.1, mask_features(square()), entry)
    assert (ok["flag"], ok["reason"], ok["shape_deviation"]) == ("ok", "", 0.0)
    assert ok["risk"] == pytest.approx(0.1 / UNCERTAIN) and ok["area"] == pytest.approx(100 / 1600)
    unsure = mask_flag(0.5, mask_features(square()), entry)
    assert (unsure["flag"], unsure["reason"]) == ("check", "uncertain")
    big = mask_flag(0.1, mask_features(square(side=25)), entry)  # far larger than every training square
    assert big["flag"] == "check" and big["shape_feature"] in big["reason"] and big["risk"] > PRIOR_MARGIN
    missing = mask_flag(0.0, None, entry)
    assert (missing["flag"], missing["reason"], missing["risk"]) == ("check", "shape: missing", math.inf)
    assert mask_flag(0.1, None, None)["flag"] == "ok"  # no prior: the uncertainty alone


def test_flags_csv_puts_the_riskiest_first():
    rows = [{"image": "b.png", "class": "c", **mask_flag(0.1, None, None)},
            {"image": "a.png", "class": "c", **mask_flag(0.7, None, None)}]
    lines = list(csv.DictReader(flags_csv(rows).splitlines()))
    assert [r["image"] for r in lines] == ["a.png", "b.png"] and lines[0]["flag"] == "check"


def test_read_prior_beside_a_model_and_a_broken_one(tmp_path):
    assert read_prior(tmp_path / "model.keras") is None
    (tmp_path / SHAPE_PRIOR_FILE).write_text(json.dumps({"version": 1, "classes": {}}))
    assert read_prior(tmp_path / "model.keras") == read_prior(tmp_path) == {"version": 1, "classes": {}}
    (tmp_path / SHAPE_PRIOR_FILE).write_text("[1, 2]")
    with pytest.raises(DataError, match="shape prior"):
        read_prior(tmp_path)


def test_predict_writes_a_flag_per_image_and_class(blob_run, tmp_path):  # noqa: F811
    run = Path(shutil.copytree(blob_run, tmp_path / "run"))
    rng = np.random.default_rng(5)
    samples = []
    for i in range(6):  # the run's shape prior, from blob scenes' masks
        image, masks = blob_scene(rng, 64, 64)
        paths = [write_image(tmp_path / "masks" / f"{i}_{name}.png", masks[..., c] * 255)
                 for c, name in enumerate(CLASSES)]
        samples.append(SimpleNamespace(mask_paths=paths))
        if i < 2:
            write_image(tmp_path / "in" / f"scene_{i}.png", image)
    write_shape_prior(run, samples, CLASSES)
    assert json.loads((run / SHAPE_PRIOR_FILE).read_text()) == shape_prior(samples, CLASSES)
    validation = [SimpleNamespace(image_path=tmp_path / "in" / f"scene_{i}.png") for i in range(2)]
    prior = add_uncertainty(run, load_predictor(run), validation)
    limits = {name: uncertainty_limit(prior["classes"][name], UNCERTAIN) for name in CLASSES}
    assert prior["classes"]["rib"]["uncertainty"]["images"] == 2 and all(0 < v < 1 for v in limits.values())
    write_image(tmp_path / "in" / "empty.png", np.full((64, 64), 20, np.uint8))  # no blob at all
    out = tmp_path / "out"
    assert predict_cli.main(["--model", str(run), "--input", str(tmp_path / "in"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / FLAGS_FILE).read_text().splitlines()))
    assert len(rows) == 3 * len(CLASSES)
    # nothing found: the ranking's score is 1 and the prior misses the class
    assert {(r["image"], r["flag"], r["reason"]) for r in rows[:3]} == {("empty.png", "check",
                                                                         "uncertain; shape: missing")}
    assert {r["flag"] for r in rows[3:] if r["class"] == "left_clavicle"} == {"ok"}  # the brightest blob: sure
    assert images.read_image(out / "rib" / "empty.png").max() == 0
    assert [float(r["risk"]) for r in rows] == sorted((float(r["risk"]) for r in rows), reverse=True)


def test_a_restart_keeps_the_flags_of_the_images_done_before(tmp_path):
    from keras_unet.infer.flags import FlagRecorder

    first = FlagRecorder(SimpleNamespace(source=str(tmp_path / "model.keras")), prior={"classes": {}})
    first.rows = [{"image": "a.png", "class": "c", **mask_flag(0.7, None, None)},
                  {"image": "b.png", "class": "c", **mask_flag(0.1, None, None)}]
    first.write(tmp_path)
    again = FlagRecorder(SimpleNamespace(source=str(tmp_path / "model.keras")), prior={"classes": {}})
    again.rows = [{"image": "b.png", "class": "c", **mask_flag(0.5, None, None)}]  # b redone, a done before
    rows = list(csv.DictReader(again.write(tmp_path).read_text().splitlines()))
    assert [(r["image"], r["flag"]) for r in rows] == [("a.png", "check"), ("b.png", "check")]
