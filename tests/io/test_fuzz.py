"""Fuzzing the Labelme reader and rasteriser: random and mutated documents give masks or a KerasUnetError."""

import base64
import json
import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_unet.data.rasterize import rasterize
from keras_unet.errors import KerasUnetError
from keras_unet.io import labelme
from labelme_factory import document, gradient, png_bytes, shape

CLASSES = ["rib", "clavicle"]
IMAGE = png_bytes(gradient(12, 16))
MASK = base64.b64encode(png_bytes(np.ones((3, 3), np.uint8))).decode("ascii")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = st.one_of(
    st.integers(-10**6, 10**6), st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308]),
    st.integers(-2**70, 2**70),
)
anything = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
points = st.lists(st.one_of(st.lists(numbers, min_size=2, max_size=2), anything), max_size=6)
shape_types = st.one_of(st.sampled_from(labelme.SHAPE_TYPES), st.none(), st.text(max_size=6), anything)
labels = st.one_of(st.sampled_from(["rib", "clavicle", "heart", "", "__ignore__"]), anything)


@st.composite
def shapes(draw):
    raw = shape(draw(labels), [], draw(shape_types))
    raw["points"] = draw(points)
    if draw(st.booleans()):
        raw["group_id"] = draw(anything)
    if draw(st.booleans()):
        raw["mask"] = draw(st.one_of(st.just(MASK), st.text(max_size=12), anything))
    for key in draw(st.lists(st.sampled_from(list(raw)), max_size=2)):
        raw.pop(key, None)
    return raw


@st.composite
def documents(draw):
    doc = document(draw(st.lists(shapes(), max_size=4)), "", 12, 16, image_data=IMAGE)
    for key in ("imageHeight", "imageWidth", "imageData", "imagePath"):
        if draw(st.integers(0, 4)) == 0:
            doc[key] = draw(anything)
    for key in draw(st.lists(st.sampled_from(list(doc)), max_size=2)):
        doc.pop(key, None)
    return doc


def _check(path, tmp_path):
    try:
        annotation = labelme.read_labelme(path, tmp_path)
        out, _ = rasterize(annotation, CLASSES, line_width=3)
        labelme.load_image(annotation)
    except KerasUnetError:
        return
    assert out.shape == (annotation.height, annotation.width, len(CLASSES))
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}


def _doc(**changes):
    doc = document([shape("rib", [[1, 1], [5, 1], [5, 5]])], "", 12, 16, image_data=IMAGE)
    return {**doc, **changes}


def _points(points, shape_type="polygon"):
    return _doc(shapes=[shape("rib", points, shape_type)])


@FUZZ
@given(doc=documents())
@example(doc=_doc(imageHeight=math.nan))  # regressions found by fuzzing
@example(doc=_doc(imageHeight=math.inf))
@example(doc=_doc(imageHeight=1e308))
@example(doc=_doc(imageHeight=10**9, imageWidth=10**9))
@example(doc=_points([[2**1100, 1], [1, 5], [0, 3]]))
@example(doc=_points([[1e308, 1], [-1e308, 5]], "circle"))
@example(doc=_points([[1e308, 1], [-1e308, 5], [0, 1e308]]))
@example(doc=_doc(imagePath="a" * 5000 + ".png", imageData=None))
@example(doc=_doc(imagePath="a\x00b.png", imageData=None))
def test_random_documents_give_masks_or_our_error(tmp_path, doc):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _check(path, tmp_path)


@FUZZ
@given(doc=documents(), cut=st.floats(0, 1), junk=st.binary(max_size=8), at=st.floats(0, 1))
def test_truncated_and_corrupted_text_gives_masks_or_our_error(tmp_path, doc, cut, junk, at):
    data = json.dumps(doc).encode("utf-8")
    data = data[: int(len(data) * cut)] if cut < 0.5 else data
    where = int(len(data) * at)
    path = tmp_path / "a.json"
    path.write_bytes(data[:where] + junk + data[where:])
    _check(path, tmp_path)
