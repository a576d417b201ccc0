"""predict.py: masks, overlays and Labelme files for a folder of images; bad images skipped; no silent overwrite."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import CLASSES, blob_run, blob_scene, tiny_run  # noqa: F401 (fixtures)
from keras_unet.cli import predict as predict_cli
from keras_unet.data.rasterize import rasterize
from keras_unet.io import images
from keras_unet.io.labelme import read_labelme
from labelme_factory import dice, write_image

SHAPES = [(70, 110), (96, 64), (80, 80)]


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate(SHAPES):
        write_image(folder / f"scene_{i}.png", blob_scene(rng, h, w)[0])
    return folder


def _run(*argv) -> int:
    return predict_cli.main([str(a) for a in argv])


def test_labelme_files_trace_the_predicted_masks(blob_run, inputs, tmp_path):  # noqa: F811
    out = tmp_path / "out" / "nested"
    assert _run("--model", blob_run / "model.keras", "--input", inputs, "--out", out, "--labelme") == 0
    for i, (h, w) in enumerate(SHAPES):
        stem = f"scene_{i}"
        predicted = np.stack([images.read_image(out / name / f"{stem}.png") for name in CLASSES], axis=-1)
        assert predicted.shape == (h, w, len(CLASSES)) and set(np.unique(predicted)) <= {0, 255}
        assert predicted[..., 0].any()  # the blob model finds the bright blob
        assert images.read_image(out / "overlays" / f"{stem}.png").shape[1] == w
        document = json.loads((out / f"{stem}.json").read_text())
        assert document["imagePath"] == f"../../in/{stem}.png"  # relative to the JSON's folder
        annotation = read_labelme(out / f"{stem}.json")
        assert annotation.image_path.resolve() == (inputs / f"{stem}.png").resolve()
        traced, _ = rasterize(annotation, CLASSES)
        for c in range(len(CLASSES)):
            assert dice(traced[..., c], predicted[..., c]) >= 0.98


def test_bad_image_is_reported_and_skipped(blob_run, inputs, tmp_path, capsys):  # noqa: F811
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (inputs / "notes.txt").write_text("not an image, not even listed")
    out = tmp_path / "out"
    assert _run("--model", blob_run, "--input", inputs, "--out", out, "--no-tta", "--threshold", "0.6") == 1
    err = capsys.readouterr().err
    assert sum("skipped:" in line and "broken.png" in line for line in err.splitlines()) == 1
    assert "4/4 images" in err
    assert sorted(p.name for p in (out / CLASSES[0]).iterdir()) == [f"scene_{i}.png" for i in range(3)]


def test_refuses_to_overwrite_and_takes_a_single_file(tiny_run, inputs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    args = ["--model", tiny_run / "model.keras", "--input", inputs / "scene_1.png", "--out", out, "--no-postprocess"]
    assert _run(*args) == 0
    assert [p.name for p in (out / "rib").iterdir()] == ["scene_1.png"]
    first = {name: (out / name / "scene_1.png").read_bytes() for name in CLASSES}
    capsys.readouterr()
    assert _run(*args) == 0  # the same command again continues the first: nothing left to do
    assert "0 image(s) segmented into" in capsys.readouterr().out
    for name in CLASSES:
        (out / name / "scene_1.png").write_bytes(b"stale")  # kept above, so still the first run's: make it stale
    assert _run(*args, "--overwrite") == 0
    for name in CLASSES:  # --overwrite really wrote the masks again, and the same ones
        assert (out / name / "scene_1.png").read_bytes() == first[name]


def test_missing_input_is_a_one_line_error(tiny_run, tmp_path, capsys):  # noqa: F811
    assert _run("--model", tiny_run, "--input", tmp_path / "nope", "--out", tmp_path / "out") == 2
    assert "nope: input not found" in capsys.readouterr().err
