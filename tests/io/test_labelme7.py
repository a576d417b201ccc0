"""Labelme 7 files with every shape type (tests/labelme_factory.labelme7_folder): read, rasterised as Labelme's
own conversion draws them (checked against Labelme's shape_to_mask where a Labelme install is found), and written
as masks by `python -m keras_unet.masks`, the rotated box of an oriented_rectangle included."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from keras_unet.data.rasterize import draw_shape, rasterize
from keras_unet.io import labelme
from keras_unet.io.images import read_image
from keras_unet.masks import main as masks_main
from labelme_factory import (dice, document, find_labelme_python, gradient, labelme7_folder, labelme7_shape,
                             write_image, write_json)

# Labelme's own masks for every shape of every file in a folder, one .npz entry "<stem>__<shape index>"
REFERENCE = r'''
import base64, io, json, sys
from pathlib import Path
import numpy as np, PIL.Image
try:
    from labelme.utils import shape_to_mask, shapes_to_label  # Labelme 5
except ImportError:
    from labelme._utils import shape_to_mask, shapes_to_label  # Labelme 7
import labelme
out = {"__version__": np.array(labelme.__version__)}
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    doc = json.loads(path.read_text())
    size = (doc["imageHeight"], doc["imageWidth"])
    for i, s in enumerate(doc["shapes"]):
        if s["shape_type"] == "mask":
            patch = np.array(PIL.Image.open(io.BytesIO(base64.b64decode(s["mask"])))).astype(bool)
            cls, _ = shapes_to_label(img_shape=size, shapes=[dict(s, mask=patch)], label_name_to_value={s["label"]: 1})
            out[f"{path.stem}__{i}"] = cls == 1
        else:
            out[f"{path.stem}__{i}"] = shape_to_mask(size, s["points"], shape_type=s["shape_type"])
np.savez_compressed(sys.argv[2], **out)
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return labelme7_folder(tmp_path_factory.mktemp("labelme7"), files=12)


def test_every_shape_type_of_labelme7_files_is_read_and_drawn(folder):
    files = labelme.find_annotations(folder)
    assert len(files) == 12
    for path in files:
        annotation = labelme.read_labelme(path, folder)
        kinds = [s.shape_type for s in annotation.shapes]
        assert kinds == ["polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "point", "mask",
                         "mask"]
        out, stats = rasterize(annotation, ["a"])
        assert stats.ignored_points == 1 and stats.pixels["a"] == int(out.sum()) > 0
        for shape in annotation.shapes:
            plane = np.zeros((annotation.height, annotation.width), np.uint8)
            draw_shape(plane, shape)
            assert plane.any() == (shape.shape_type != "point"), (path.name, shape.shape_type)


def _oriented_folder(tmp_path):
    # a square turned 45 degrees whose corners lie in pixels (10, 2), (18, 10), (10, 18), (2, 10)
    corners = [[10.4, 2.2], [18.9, 10.3], [10.6, 18.8], [2.1, 10.7]]
    write_image(tmp_path / "data" / "box.png", gradient(24, 24))
    doc = document([labelme7_shape("bone", corners, "oriented_rectangle", locked=True)], "box.png", 24, 24)
    write_json(tmp_path / "data" / "box.json", {**doc, "version": "7.9.1"})
    y, x = np.mgrid[:24, :24]
    return tmp_path / "data", (np.abs(x - 10) + np.abs(y - 10) <= 8).astype(np.uint8) * 255


def test_masks_command_writes_the_rotated_box(tmp_path):
    data, expected = _oriented_folder(tmp_path)
    assert masks_main([str(data), "--classes", "bone", "--out", str(tmp_path / "out")]) == 0
    assert np.array_equal(read_image(tmp_path / "out" / "bone" / "box.png"), expected)


@pytest.mark.slow
def test_python_m_keras_unet_masks_writes_the_rotated_box(tmp_path):
    data, expected = _oriented_folder(tmp_path)
    run = subprocess.run([sys.executable, "-m", "keras_unet.masks", str(data), "--classes", "bone", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(read_image(tmp_path / "out" / "bone" / "box.png"), expected)


@pytest.mark.slow
def test_masks_equal_labelmes_own_shape_to_mask(tmp_path):
    python = find_labelme_python()
    if python is None:
        pytest.skip("no Python with Labelme found (set KERAS_UNET_LABELME_PYTHON, or: python3.12 -m venv /tmp/lm7 "
                    "&& /tmp/lm7/bin/pip install labelme)")
    folder = labelme7_folder(tmp_path / "labelme7", files=40, height=48, width=64, seed=3)
    (tmp_path / "reference.py").write_text(REFERENCE)
    run = subprocess.run([python, str(tmp_path / "reference.py"), str(folder), str(tmp_path / "ref.npz")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    reference = np.load(tmp_path / "ref.npz")
    differing = {}
    for path in labelme.find_annotations(folder):
        annotation = labelme.read_labelme(path)
        for index, shape in enumerate(annotation.shapes):
            if shape.shape_type == "point":
                continue  # no area: not drawn here (Labelme's conversion paints an 11-pixel disc)
            plane = np.zeros((annotation.height, annotation.width), np.uint8)
            draw_shape(plane, shape)
            want = reference[f"{path.stem}__{index}"]
            assert want.any(), (path.name, index)
            differing.setdefault(shape.shape_type, []).append(int(np.count_nonzero(plane.astype(bool) != want)))
            assert dice(plane, want) == 1.0, (path.name, index, shape.shape_type)
    print(f"Labelme {reference['__version__']}: differing pixels per shape type (max over "
          f"{len(labelme.find_annotations(folder))} files): " + ", ".join(f"{k} {max(v)}" for k, v in differing.items()))
    assert set(differing) == {"polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "mask"}
