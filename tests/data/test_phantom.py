"""The synthetic chest radiograph generator (keras_unet.data.phantom) and its command (keras_unet.cli.phantom)."""

import json

import cv2
import numpy as np
import pytest

from keras_unet.cli.phantom import main
from keras_unet.data.phantom import LABELS, make_phantom, write_sample
from keras_unet.errors import KerasUnetError
from keras_unet.io.labelme import labelme_document

SIZE = 192


def _phantom(index, size=SIZE, seed=0):
    return make_phantom(np.random.default_rng([seed, index]), size)


def _mask(shapes, label, size):
    mask = np.zeros((size, size), np.uint8)
    for shape in shapes:
        if shape["label"] == label:
            cv2.fillPoly(mask, [np.round(np.asarray(shape["points"])).astype(np.int32)], 1)
    return mask


@pytest.fixture(scope="module")
def phantoms():
    return [_phantom(i) for i in range(3)]


def test_same_generator_seed_gives_identical_phantom():
    image_a, shapes_a = _phantom(4)
    image_b, shapes_b = _phantom(4)
    assert np.array_equal(image_a, image_b)
    assert shapes_a == shapes_b
    image_c, _ = _phantom(5)
    assert not np.array_equal(image_a, image_c)


def test_image_and_shapes_have_expected_types_and_ranges(phantoms):
    for image, shapes in phantoms:
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
        assert image.std() > 20  # not a flat image
        for shape in shapes:
            assert set(shape) == {"label", "points"}
            assert shape["label"] in LABELS
            points = np.asarray(shape["points"])
            assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
            assert all(isinstance(v, float) for p in shape["points"] for v in p)
            assert points.min() >= 0 and points.max() <= SIZE - 1


def test_every_label_present_with_one_clavicle_each_and_10_to_12_rib_pairs(phantoms):
    for _, shapes in phantoms:
        labels = [s["label"] for s in shapes]
        assert labels.count("left_clavicle") == 1 and labels.count("right_clavicle") == 1
        assert 40 <= labels.count("rib") <= 48  # posterior + anterior arc, both sides


def test_left_clavicle_is_on_image_right_and_right_clavicle_on_image_left(phantoms):
    for _, shapes in phantoms:
        centre = {s["label"]: np.mean(s["points"], axis=0)[0] for s in shapes if "clavicle" in s["label"]}
        assert centre["left_clavicle"] > SIZE / 2 > centre["right_clavicle"]


def test_bones_are_brighter_than_their_surroundings(phantoms):
    for image, shapes in phantoms:
        rib = _mask(shapes, "rib", SIZE).astype(bool)
        clavicle = (_mask(shapes, "left_clavicle", SIZE) | _mask(shapes, "right_clavicle", SIZE)).astype(bool)
        near = cv2.dilate(rib.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~rib & ~clavicle
        assert image[rib].mean() > image[near].mean() + 10


def test_clavicles_overlap_ribs():
    overlaps = []
    for image, shapes in (_phantom(i) for i in range(3)):
        rib = _mask(shapes, "rib", SIZE)
        for label in ("left_clavicle", "right_clavicle"):
            overlaps.append(int((rib & _mask(shapes, label, SIZE)).sum()))
    assert max(overlaps) > 0


def test_labelme_document_structure():
    shapes = [{"label": "rib", "points": [[1.234, 2.0], [3.0, 4.567], [5.0, 1.0]]}]
    doc = labelme_document(shapes, "x.png", 30, 40, digits=2)  # as write_sample writes them
    assert doc["version"] == "7.9.1"  # what Labelme 7.9.1 writes
    assert doc["imagePath"] == "x.png" and doc["imageData"] is None
    assert (doc["imageHeight"], doc["imageWidth"]) == (30, 40)
    assert doc["flags"] == {}
    shape = doc["shapes"][0]
    assert shape == {
        "label": "rib",
        "points": [[1.23, 2.0], [3.0, 4.57], [5.0, 1.0]],
        "group_id": None,
        "description": "",
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }
    assert json.loads(json.dumps(doc)) == doc


def test_write_sample_files_are_deterministic_and_independent_of_count(tmp_path):
    small = write_sample(tmp_path / "a", count=2, size=96, seed=3)
    large = write_sample(tmp_path / "b", count=3, size=96, seed=3)
    assert [p.name for p in small] == ["phantom_000.json", "phantom_001.json"]
    assert (tmp_path / "a" / "labels.txt").read_text().split() == list(LABELS)
    for a, b in zip(small, large[:2]):
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".png").read_bytes() == b.with_suffix(".png").read_bytes()
    doc = json.loads(small[1].read_text())
    assert doc["imagePath"] == "phantom_001.png" and doc["imageHeight"] == 96
    image = cv2.imread(str(small[1].with_suffix(".png")), cv2.IMREAD_UNCHANGED)
    expected, shapes = make_phantom(np.random.default_rng([3, 1]), 96)
    assert np.array_equal(image, expected)
    assert [s["points"] for s in doc["shapes"]] == [s["points"] for s in shapes]
    other = write_sample(tmp_path / "c", count=2, size=96, seed=4)
    assert other[0].read_bytes() != small[0].read_bytes()


def test_write_sample_refuses_foreign_files_unless_overwrite(tmp_path):
    write_sample(tmp_path, count=1, size=64)
    write_sample(tmp_path, count=1, size=64)  # only its own files: rewriting is fine
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(KerasUnetError, match="notes.txt"):
        write_sample(tmp_path, count=1, size=64)
    paths = write_sample(tmp_path, count=1, size=64, overwrite=True)
    assert paths[0].exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_writes_sample_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "sample"
    assert main(["--out", str(out), "--count", "2", "--size", "128", "--seed", "1"]) == 0
    assert capsys.readouterr().out == f"wrote 2 phantom images (128x128) with Labelme JSON to {out}\n"
    names = sorted(p.name for p in out.iterdir())
    expected = ["labels.txt"] + [f"phantom_00{i}.{ext}" for i in range(2) for ext in ("json", "png")]
    assert names == expected
    assert cv2.imread(str(out / "phantom_001.png"), cv2.IMREAD_UNCHANGED).shape == (128, 128)
    (out / "other.png").write_bytes(b"")
    assert main(["--out", str(out), "--count", "2", "--size", "128"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert main(["--out", str(out), "--count", "2", "--size", "128", "--overwrite"]) == 0
    assert main(["--out", str(tmp_path / "new"), "--count", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
