"""keras_unet.io.labelme: Labelme JSON in (3 to 7), validation, finding files, the source-image key, JSON out."""

import base64
import json

import numpy as np
import pytest

from keras_unet.errors import DataError
from keras_unet.io import labelme
from labelme_factory import document, gradient, labelme_pair, png_bytes, shape, write_image, write_json

SQUARE = [[2, 2], [7, 2], [7, 7], [2, 7]]


def _error(call, *args) -> str:
    with pytest.raises(DataError) as info:
        call(*args)
    return str(info.value)


def test_external_image_beside_json(tmp_path):
    path = labelme_pair(tmp_path, "a", [shape("bone", SQUARE), shape("rib", [[0, 0], [5, 5]], "rectangle")])
    annotation = labelme.read_labelme(path)
    assert annotation.image_path == tmp_path / "a.png" and annotation.image_data is None
    assert (annotation.height, annotation.width) == (20, 30)
    assert [s.label for s in annotation.shapes] == ["bone", "rib"]
    assert [s.shape_type for s in annotation.shapes] == ["polygon", "rectangle"]
    assert annotation.shapes[0].points.dtype == np.float64 and annotation.shapes[0].points.shape == (4, 2)
    assert np.array_equal(labelme.load_image(annotation), gradient())


def test_embedded_image_data(tmp_path):
    image = gradient(12, 9)
    path = write_json(tmp_path / "e.json", document([shape("a", SQUARE)], "gone.png", 12, 9, png_bytes(image)))
    annotation = labelme.read_labelme(path)
    assert annotation.image_data == png_bytes(image)
    assert np.array_equal(labelme.load_image(annotation), image)  # imagePath is missing, imageData wins


def test_windows_backslash_image_path(tmp_path):
    write_image(tmp_path / "sub" / "img.png", gradient())
    path = write_json(tmp_path / "a.json", document([], "sub\\img.png"))
    annotation = labelme.read_labelme(path)
    assert annotation.image_path == tmp_path / "sub" / "img.png"
    assert labelme.load_image(annotation).shape == (20, 30)


def test_absolute_windows_path_falls_back_to_file_beside_json(tmp_path):
    write_image(tmp_path / "img.png", gradient())
    path = write_json(tmp_path / "a.json", document([], "C:\\Users\\me\\xrays\\img.png"))
    annotation = labelme.read_labelme(path)
    assert annotation.image_path == tmp_path / "img.png"
    assert annotation.warnings and "img.png" in annotation.warnings[0]


def test_outside_data_dir_flag(tmp_path):
    write_image(tmp_path / "images" / "a.png", gradient())
    path = write_json(tmp_path / "ann" / "a.json", document([], "../images/a.png"))
    assert labelme.read_labelme(path, data_dir=tmp_path / "ann").outside_data_dir
    assert not labelme.read_labelme(path, data_dir=tmp_path).outside_data_dir


def test_version_3_file_without_size_or_shape_type(tmp_path):
    write_image(tmp_path / "old.png", gradient(11, 13))
    legacy = {
        "flags": {},
        "shapes": [{"label": "bone", "line_color": None, "fill_color": None, "points": SQUARE}],
        "lineColor": [0, 255, 0, 128],
        "fillColor": [255, 0, 0, 128],
        "imagePath": "old.png",
        "imageData": None,
    }
    annotation = labelme.read_labelme(write_json(tmp_path / "old.json", legacy))
    assert (annotation.height, annotation.width) == (11, 13)
    assert annotation.shapes[0].shape_type == "polygon" and annotation.shapes[0].group_id is None


def test_version_3_embedded_without_size(tmp_path):
    data = png_bytes(gradient(7, 5))
    legacy = {"shapes": [], "imagePath": "x.png", "imageData": base64.encodebytes(data).decode()}  # with newlines
    annotation = labelme.read_labelme(write_json(tmp_path / "old.json", legacy))
    assert (annotation.height, annotation.width) == (7, 5)


def test_every_shape_type_parses(tmp_path):
    mask = np.zeros((3, 4), np.uint8)
    mask[1, 1:3] = 1
    shapes = [
        shape("a", SQUARE),
        shape("a", [[0, 0], [3, 3]], "rectangle"),
        shape("a", [[1.5, 1], [6, 3.5], [4.5, 8], [0, 5.5]], "oriented_rectangle", locked=True),
        shape("a", [[5, 5], [8, 5]], "circle"),
        shape("a", [[0, 0], [9, 9]], "line"),
        shape("a", [[0, 0], [4, 0], [4, 4]], "linestrip"),
        shape("a", [[3, 3]], "point"),
        shape("a", [[1, 1], [4, 3]], "mask", mask=base64.b64encode(png_bytes(mask)).decode(), group_id=7),
    ]
    annotation = labelme.read_labelme(labelme_pair(tmp_path, "s", shapes))
    types = [s.shape_type for s in annotation.shapes]
    assert types == ["polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "point", "mask"]
    assert annotation.shapes[2].points.tolist() == [[1.5, 1], [6, 3.5], [4.5, 8], [0, 5.5]]
    masked = annotation.shapes[-1]
    assert masked.group_id == 7 and masked.mask.dtype == bool and np.array_equal(masked.mask, mask > 0)
    assert not annotation.warnings


def _bad_file(tmp_path, content, name="bad.json"):
    write_image(tmp_path / "img.png", gradient())
    return write_json(tmp_path / name, content)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2, 3]", "not a Labelme annotation"),
        ('{"version": "5.0.1", "imagePath": "img.png"}', "not a Labelme annotation"),
        (document([shape("bone", [[1, 1], [2, 2]])], "img.png"), "shape 0 ('bone')"),
        (document([shape("a", SQUARE), shape("bone", [[1, 1]], "rectangle")], "img.png"), "shape 1 ('bone')"),
        (document([shape("bone", [[1, 1], [2, 2], [3, 3]], "circle")], "img.png"), "exactly 2 points"),
        (document([shape("bone", [[1, 1], [2, 2], [3, 3], [1, 3], [0, 0]], "oriented_rectangle")], "img.png"),
         "an oriented_rectangle needs exactly 4 points, this one has 5"),
        ({**document([], "img.png"), "keras_unet": {"source": "x.png"}}, "'keras_unet' is not an object with"),
        (document([shape("bone", SQUARE, "ellipse")], "img.png"), "unknown shape_type 'ellipse'"),
        (document([shape("bone", [[1, 1], [2, "x"], [3, 3]])], "img.png"), "not a pair of numbers"),
        (document([{"points": SQUARE, "shape_type": "polygon"}], "img.png"), "shape 0 has no label"),
        (document([shape("bone", [[0, 0], [4, 4]], "mask")], "img.png"), "base64 PNG"),
        ({**document([], "img.png"), "imageData": "***not base64***"}, "not valid base64"),
        ({**document([], "img.png"), "imageHeight": -3}, "imageHeight"),
        ({**document([]), "imagePath": None}, "neither imageData nor imagePath"),
    ],
)
def test_invalid_files_raise_data_error_naming_the_file(tmp_path, content, expected):
    message = _error(labelme.read_labelme, _bad_file(tmp_path, content))
    assert "bad.json" in message and expected in message


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_coordinates(tmp_path, value):
    text = json.dumps(document([shape("clavicle", SQUARE)], "img.png")).replace("[7, 2]", f"[7, {value}]", 1)
    message = _error(labelme.read_labelme, _bad_file(tmp_path, text))
    assert "bad.json" in message and "not finite" in message and "'clavicle'" in message


def test_missing_image_file(tmp_path):
    path = write_json(tmp_path / "a.json", document([], "nowhere.png"))
    message = _error(labelme.load_image, labelme.read_labelme(path))
    assert "nowhere.png" in message and "not found" in message


def test_size_mismatch(tmp_path):
    write_image(tmp_path / "a.png", gradient(20, 30))
    annotation = labelme.read_labelme(write_json(tmp_path / "a.json", document([], "a.png", height=25, width=30)))
    message = _error(labelme.load_image, annotation)
    assert "a.json" in message and "image is 30x20 but the annotation says 30x25" in message
    assert "image is 30x20 but the annotation says 30x25" in _error(labelme.check_image_size, annotation)


def test_find_annotations_recursive_sorted_and_skipping(tmp_path):
    for rel in ["b.json", "a.json", "sub/c.json", ".hidden/d.json", "masks/e.json", "sub/masks/f.json", "x.png"]:
        write_json(tmp_path / rel, "{}")
    found = [p.relative_to(tmp_path).as_posix() for p in labelme.find_annotations(tmp_path)]
    assert found == ["a.json", "b.json", "sub/c.json"]


def test_find_annotations_errors(tmp_path):
    assert "folder not found" in _error(labelme.find_annotations, tmp_path / "missing")
    assert "no Labelme .json files" in _error(labelme.find_annotations, tmp_path)


def test_labelme_document_roundtrip(tmp_path):
    write_image(tmp_path / "img.png", gradient())
    shapes = [labelme.Shape("bone", "polygon", np.array(SQUARE, dtype=float)), {"label": "rib", "points": SQUARE}]
    doc = labelme.labelme_document(shapes, "img.png", 20, 30)
    assert doc["version"] == "7.9.1" and doc["imageData"] is None  # what Labelme 7.9.1 writes
    assert [s["shape_type"] for s in doc["shapes"]] == ["polygon", "polygon"]
    labelme.write_labelme(tmp_path / "pred.json", doc)
    back = labelme.read_labelme(tmp_path / "pred.json")
    assert back.shapes[0] == shapes[0] and back.shapes[1].label == "rib"
    assert (back.height, back.width) == (20, 30)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_labelme_document_embeds_image_data():
    data = png_bytes(gradient(4, 4))
    doc = labelme.labelme_document([], "x.png", 4, 4, image_data=data)
    assert base64.b64decode(doc["imageData"]) == data


def test_unknown_keys_are_ignored(tmp_path):
    # Labelme 7's per-shape `locked`, Labelme 3's colours, another tool's extras: read as if absent
    extra = {"locked": True, "line_color": [0, 255, 0, 128], "fill_color": None, "score": 0.9, "attributes": {}}
    path = labelme_pair(tmp_path, "a", [shape("bone", SQUARE, **extra), shape("rib", SQUARE)])
    doc = json.loads(path.read_text())
    write_json(path, {**doc, "lineColor": [0, 255, 0, 128], "otherTool": {"x": 1}})
    annotation = labelme.read_labelme(path)
    assert annotation.shapes[0] == labelme.Shape("bone", "polygon", np.array(SQUARE, dtype=float))
    assert not annotation.warnings


def test_source_image_key_names_the_image_read(tmp_path):
    original = (gradient(20, 30, np.uint16) * 50).astype(np.uint16)
    write_image(tmp_path / "orig" / "scan.png", original)
    write_image(tmp_path / "pre" / "scan.png", gradient(20, 30))  # the 8-bit copy the annotator opened
    doc = {**document([shape("bone", SQUARE)], "scan.png", image_data=png_bytes(gradient(20, 30))),
           labelme.SOURCE_KEY: {"source_image": "../orig/scan.png"}}
    annotation = labelme.read_labelme(write_json(tmp_path / "pre" / "scan.json", doc))
    assert annotation.image_path == tmp_path / "pre" / ".." / "orig" / "scan.png" and annotation.image_data is None
    assert np.array_equal(labelme.load_image(annotation), original) and not annotation.warnings
    (tmp_path / "orig" / "scan.png").unlink()  # moved away: the copy is used, with a warning
    annotation = labelme.read_labelme(tmp_path / "pre" / "scan.json")
    assert annotation.image_data is not None and np.array_equal(labelme.load_image(annotation), gradient(20, 30))
    assert len(annotation.warnings) == 1 and "its original image '../orig/scan.png'" in annotation.warnings[0]
