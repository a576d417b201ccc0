"""Fuzzing the Labelme reader and rasteriser, the image decoders and the DICOM reader: random, mutated, deeply nested,
huge and wrongly typed input gives masks (an image) or a KerasUnetError naming the file, never another exception."""

import base64
import functools
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_unet.data.rasterize import rasterize
from keras_unet.errors import KerasUnetError
from keras_unet.io import images, labelme
from helpers import tiny_run  # noqa: F401 (fixture)
from labelme_factory import document, gradient, png_bytes, shape

CLASSES = ["rib", "clavicle"]
IMAGE = png_bytes(gradient(12, 16))
MASK = base64.b64encode(png_bytes(np.ones((3, 3), np.uint8))).decode("ascii")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HEADER_FUZZ = settings(FUZZ, max_examples=15)  # the default suite's bound on the decoder examples (a few seconds)

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


# -- structural mutations: deep nesting, huge strings and arrays, wrong types in every field ---------------------

WRONG = [None, True, -1, 2**70, math.nan, "", "x" * 10_000, [1, "a", None], {"a": []}, [[[[[]]]]]]


def _write(tmp_path, text):
    path = tmp_path / "a.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # deeper than Python's recursion limit: json raises RecursionError
    '{"shapes": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"shapes": [], "imagePath": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}",
])
def test_nesting_deeper_than_the_recursion_limit_is_one_line(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(KerasUnetError) as error:
        _check_raises(path, tmp_path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def _check_raises(path, tmp_path):
    annotation = labelme.read_labelme(path, tmp_path)
    rasterize(annotation, CLASSES, line_width=3)
    labelme.load_image(annotation)


def test_huge_strings_and_arrays_give_masks_or_our_error(tmp_path):
    many = [[float(i % 16), float(i % 12)] for i in range(5_000)]
    for doc in [_points(many), _points(many, "linestrip"), _doc(imageData="A" * 2_000_000),
                _doc(imagePath="b" * 1_000_000 + ".png", imageData=None),
                _doc(shapes=[shape("r" * 1_000_000, [[1, 1], [5, 1], [5, 5]])]),
                _doc(shapes=[shape("rib", [[1, 1], [5, 1], [5, 5]])] * 500),
                _doc(flags={str(i): i for i in range(20_000)})]:
        _check(_write(tmp_path, doc), tmp_path)


def test_a_wrong_type_in_every_field_gives_masks_or_our_error(tmp_path):
    base = _doc()
    checked = 0
    for key in [*base, "shapes[0]", *(f"shapes[0].{k}" for k in base["shapes"][0]), "shapes[0].points[0]",
                "shapes[0].points[0][0]"]:
        for value in WRONG:
            doc = json.loads(json.dumps(base))
            target, *path = key.replace("]", "").replace("[", ".").split(".")
            holder, name = (doc, target) if not path else (doc[target], path[0])
            for part in path[1:]:
                holder, name = holder[int(name)] if isinstance(holder, list) else holder[name], part
            holder[int(name) if isinstance(holder, list) else name] = value
            _check(_write(tmp_path, json.dumps(doc, allow_nan=True)), tmp_path)
            checked += 1
    assert checked == len(WRONG) * (len(base) + 1 + len(base["shapes"][0]) + 2)


# -- image headers: every decoder failure is one DataError naming the file ------------------------------------

def _tiff_bytes():
    from PIL import Image
    import io as _io

    buffer = _io.BytesIO()
    Image.fromarray(gradient(12, 16)).save(buffer, format="TIFF")
    return buffer.getvalue()


def _bmp_bytes():
    import cv2

    return cv2.imencode(".bmp", gradient(12, 16))[1].tobytes()


def _jpeg_bytes():
    import cv2

    return cv2.imencode(".jpg", gradient(12, 16))[1].tobytes()


HEADERS = {"png": (IMAGE, 64), "tiff": (_tiff_bytes(), 200), "bmp": (_bmp_bytes(), 60), "jpeg": (_jpeg_bytes(), 200)}


def _decode_or_our_error(data, source):
    try:
        image = images.decode_image(data, source)
        height, width = images.image_dimensions(data, source)
    except KerasUnetError as error:
        assert str(error).startswith(f"{source}: ") and "\n" not in str(error)
        return
    assert image.ndim == 2 and image.size > 0 and (height, width) == image.shape


@HEADER_FUZZ
@given(kind=st.sampled_from(sorted(HEADERS)), data=st.data())
@example(kind="png", data=None)
def test_mutated_image_headers_give_an_image_or_our_error(tmp_path, kind, data):
    original, header = HEADERS[kind]
    mutated = bytearray(original)
    if data is None:  # a PNG claiming 2^31-1 x 2^31-1 pixels
        mutated[16:24] = b"\x7f\xff\xff\xff\x7f\xff\xff\xff"
    else:
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, min(header, len(mutated)) - 1))
            mutated[at] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, data.draw(st.integers(0, 255))]))
    _decode_or_our_error(bytes(mutated), tmp_path / f"x.{kind}")


@functools.cache
def _dicom_bytes(tmp_path):
    from helpers import write_dicom

    return write_dicom(tmp_path / "x.dcm", (gradient(12, 16).astype(np.uint16) * 200), WindowCenter=2000,
                       WindowWidth=4000, PixelSpacing=[0.5, 0.5]).read_bytes()


@HEADER_FUZZ
@given(data=st.data())
def test_mutated_dicom_headers_give_an_image_or_our_error(tmp_path_factory, data):
    original = _dicom_bytes(tmp_path_factory.getbasetemp())
    pixels = original.rfind(b"\xe0\x7f\x10\x00")  # the PixelData tag: the header is what comes before
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(132, pixels + 12))
        mutated[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(132, len(mutated)))]
    source = tmp_path_factory.getbasetemp() / "x.dcm"
    _decode_or_our_error(bytes(mutated), source)
    try:
        images.read_spacing(bytes(mutated))
    except KerasUnetError:
        pass


@pytest.mark.parametrize("field, value", [("Rows", 65535), ("Columns", 0), ("BitsAllocated", 64),
                                          ("BitsStored", 40), ("SamplesPerPixel", 0), ("NumberOfFrames", 1_000_000_000),
                                          ("PixelSpacing", [0, -1]), ("WindowWidth", 0)])
def test_dicom_fields_of_absurd_values_give_an_image_or_our_error(tmp_path, field, value):
    from helpers import write_dicom

    path = write_dicom(tmp_path / "x.dcm", gradient(12, 16).astype(np.uint16), **{field: value})
    _decode_or_our_error(path.read_bytes(), path)
    try:
        images.read_spacing(path)
    except KerasUnetError as error:
        assert str(error).startswith(f"{path}: ")


def test_an_export_metadata_nested_too_deeply_is_one_line(tmp_path):
    from keras_unet.errors import ConfigError
    from keras_unet.infer.load import read_metadata

    path = _write(tmp_path, '{"config": ' + "[" * 100_000 + "]" * 100_000 + "}").rename(tmp_path / "metadata.json")
    with pytest.raises(ConfigError) as error:
        read_metadata(path)
    assert str(error.value).startswith(f"{path}: cannot read metadata (maximum recursion depth exceeded")


@pytest.mark.slow  # Keras
def test_mutated_and_truncated_model_files_give_one_line(tiny_run, tmp_path):  # noqa: F811
    import random
    import shutil

    from keras_unet.infer.load import load_predictor

    data = (tiny_run / "model.keras").read_bytes()
    rng = random.Random(0)
    for i in range(20):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if i % 3 == 0:
            mutated = mutated[: rng.randrange(len(mutated))]
        run = shutil.copytree(tiny_run, tmp_path / f"run{i}")
        (run / "model.keras").write_bytes(bytes(mutated))
        try:
            load_predictor(run / "model.keras")
        except KerasUnetError as error:
            assert str(run / "model.keras") in str(error) and "\n" not in str(error)
