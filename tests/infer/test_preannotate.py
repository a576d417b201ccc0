"""keras_unet.infer.preannotate: simplified polygons that rasterise back to the predicted masks, and 8-bit copies of
16-bit and DICOM images (windowed as the model saw them) whose corrected JSON trains on the original's pixels."""

from __future__ import annotations

import base64
import json
import subprocess

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import JSRT_DIR as JSRT
from helpers import blob_scene, write_dicom
from keras_unet.config import NormalizationConfig
from keras_unet.data.rasterize import draw_shape, rasterize
from keras_unet.data.samples import prepare_samples
from keras_unet.infer.preannotate import POLYGON_EPSILON, labelme_polygons, write_preannotation
from keras_unet.io import labelme
from keras_unet.io.images import read_image
from labelme_factory import dice, find_labelme_python, write_image

CLASSES = ["left_clavicle", "right_clavicle", "rib"]


def _scene(height=96, width=128, seed=0):
    image, masks = blob_scene(np.random.default_rng(seed), height, width)
    ramp = np.linspace(0, 1, height * width).reshape(height, width)
    image16 = (image.astype(np.float64) * 200 + ramp * 4000).astype(np.uint16)  # 0..55000: needs 16 bits
    return image16, masks


def _window_by_hand(image, low=1.0, high=99.0):
    values = np.sort(image.ravel().astype(np.float64))  # side <= 256: every pixel is sampled
    n = values.size
    return values[int(np.floor(low / 100 * (n - 1) + 0.5))], values[int(np.floor(high / 100 * (n - 1) + 0.5))]


def _check_8bit_copy(json_path, image, source):
    document = json.loads(json_path.read_text())
    copy = json_path.parent / document["imagePath"]
    assert copy == json_path.with_suffix(".png") and copy != source
    with Image.open(copy) as opened:  # an 8-bit grayscale PNG, which Labelme opens
        assert opened.mode == "L" and opened.size == (image.shape[1], image.shape[0])
    lo, hi = _window_by_hand(image)
    expected = np.round(np.clip((image.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255)
    assert np.abs(read_image(copy).astype(int) - expected).max() <= 1  # float32 arithmetic in the project
    extra = document[labelme.SOURCE_KEY]
    assert (json_path.parent / extra["source_image"]).resolve() == source.resolve()
    assert extra["window"] == pytest.approx([lo, hi])
    assert document["version"] == "7.9.1" and document["imageData"] is None
    return document


def _annotator_saves(json_path, document, copy_bytes):
    # the annotator drags one vertex and saves with Labelme 7, image data embedded: the other keys are kept
    x, y = document["shapes"][0]["points"][0]
    document["shapes"][0]["points"][0] = [x + 1.5, y]
    document["shapes"][0]["locked"] = True
    document["imageData"] = base64.b64encode(copy_bytes).decode("ascii")
    json_path.write_text(json.dumps(document))


@pytest.mark.parametrize("kind", ["png16", "dicom"])
def test_16bit_and_dicom_preannotations_open_as_8bit_and_train_on_the_original(kind, tmp_path):
    image16, masks = _scene()
    if kind == "png16":
        source = write_image(tmp_path / "in" / "scan.png", image16)
    else:
        source = write_dicom(tmp_path / "in" / "scan.dcm", image16)  # no window: its own min..max, as 16 bits
    image = read_image(source)
    assert image.dtype == np.uint16
    data = tmp_path / "pre"
    json_path = write_preannotation(data / "scan.json", masks, CLASSES, source, image, NormalizationConfig())
    document = _check_8bit_copy(json_path, image, source)
    _annotator_saves(json_path, document, (data / "scan.png").read_bytes())
    samples = prepare_samples(data, CLASSES, cache_dir=tmp_path / "cache", log=None)
    assert len(samples) == 1
    assert np.array_equal(read_image(samples[0].image_path), image)  # the original's values, not the 8-bit copy's


def test_8bit_input_points_at_the_original(tmp_path):
    image16, masks = _scene()
    source = write_image(tmp_path / "in" / "scan.png", (image16 // 256).astype(np.uint8))
    json_path = write_preannotation(tmp_path / "out" / "scan.json", masks, CLASSES, source, read_image(source),
                                    NormalizationConfig())
    document = json.loads(json_path.read_text())
    assert document["imagePath"] == "../in/scan.png" and labelme.SOURCE_KEY not in document
    assert not (tmp_path / "out" / "scan.png").exists()


def test_the_copy_never_replaces_the_original(tmp_path):
    image16, masks = _scene()
    source = write_image(tmp_path / "scan.png", image16)
    write_preannotation(tmp_path / "scan.json", masks, CLASSES, source, image16, NormalizationConfig())
    assert np.array_equal(read_image(source), image16)
    assert json.loads((tmp_path / "scan.json").read_text())["imagePath"] == "scan_8bit.png"


def _round_trip(masks, json_path):
    document = labelme.read_labelme(json_path)
    back, _ = rasterize(document, CLASSES)
    return [dice(back[..., c], masks[..., c]) for c in range(len(CLASSES))], document


def test_simplified_polygons_rasterise_back_to_the_predicted_masks(tmp_path):
    for seed in range(3):
        image, masks = blob_scene(np.random.default_rng(seed), 384, 512)
        source = write_image(tmp_path / f"s{seed}.png", image)
        json_path = write_preannotation(tmp_path / "out" / f"s{seed}.json", masks, CLASSES, source, image,
                                        NormalizationConfig())
        scores, document = _round_trip(masks, json_path)
        assert min(scores) >= 0.98, scores
        counts = [len(s.points) for s in document.shapes]
        assert len(counts) == 3 and max(counts) <= 60, counts  # one outline per blob, a few dozen vertices
        for shape in document.shapes:  # in Labelme's coordinates: through the boundary pixels' centres
            assert np.array_equal(shape.points % 1, np.full_like(shape.points, 0.5))


def test_polygons_are_in_labelmes_coordinates():
    mask = np.zeros((6, 8), np.uint8)
    mask[1:4, 2:6] = 1  # rows 1-3, columns 2-5: centres at 2.5 .. 5.5 and 1.5 .. 3.5
    (polygon,) = labelme_polygons(mask)
    assert {tuple(v) for v in polygon} == {(2.5, 1.5), (5.5, 1.5), (5.5, 3.5), (2.5, 3.5)}


@pytest.mark.slow
@pytest.mark.skipif(not JSRT.is_dir(), reason="research data folder ../shared/datasets/jsrt-scr-fold1 absent")
def test_jsrt_expert_masks_simplify_to_a_few_dozen_vertices():
    classes = ["left_clavicle", "right_clavicle", "left_lung", "right_lung", "heart"]
    before, after, scores = [], [], []
    for path in sorted((JSRT / "masks" / classes[0]).glob("*.png"))[:40]:  # all 124: 26 (max 58), Dice >= 0.983
        for name in classes:
            mask = (read_image(JSRT / "masks" / name / path.name) > 0).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            before.extend(len(c) for c in contours if cv2.contourArea(c) > 0)
            plane = np.zeros_like(mask)
            for polygon in labelme_polygons(mask):
                after.append(len(polygon))
                draw_shape(plane, labelme.Shape(name, "polygon", polygon))
            scores.append(dice(plane, mask))
    print(f"JSRT expert masks, epsilon {POLYGON_EPSILON} px: vertices per outline median {np.median(before):.0f} "
          f"(max {max(before)}) before, {np.median(after):.0f} (max {max(after)}) after; round-trip Dice "
          f"min {min(scores):.4f} mean {np.mean(scores):.4f} over {len(scores)} masks")
    assert min(scores) >= 0.98 and np.median(after) <= 40


# Labelme 7 opens a pre-annotation, prints its image's mode and size, and saves it back with the image embedded
LABELME_OPENS = r'''
import sys
from labelme import _utils
from labelme._label_file import read_label_file, write_label_file
annotation = read_label_file(filename=sys.argv[1])
picture = _utils.img_data_to_pil(annotation.image_data)
print(picture.mode, picture.size[0], picture.size[1], len(annotation.shapes))
write_label_file(filename=sys.argv[1], annotation=annotation, image_height=picture.size[1],
                 image_width=picture.size[0], save_image_data=True)
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["png16", "dicom"])
def test_labelme7_opens_the_preannotation_and_its_save_trains_on_the_original(kind, tmp_path):
    python = find_labelme_python(major=7)
    if python is None:
        pytest.skip("no Python with Labelme 7 found (KERAS_UNET_LABELME_PYTHON, python3.12 or /tmp/lm7)")
    image16, masks = _scene()
    source = (write_image(tmp_path / "in" / "scan.png", image16) if kind == "png16"
              else write_dicom(tmp_path / "in" / "scan.dcm", image16))
    json_path = write_preannotation(tmp_path / "pre" / "scan.json", masks, CLASSES, source, read_image(source),
                                    NormalizationConfig())
    (tmp_path / "opens.py").write_text(LABELME_OPENS)
    run = subprocess.run([python, str(tmp_path / "opens.py"), str(json_path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[:4] == ["L", "128", "96", "3"]  # an 8-bit grayscale image, the three outlines
    saved = json.loads(json_path.read_text())
    assert saved["imageData"] and saved[labelme.SOURCE_KEY]["source_image"] == f"../in/{source.name}"
    samples = prepare_samples(tmp_path / "pre", CLASSES, cache_dir=tmp_path / "cache", log=None)
    assert np.array_equal(read_image(samples[0].image_path), read_image(source))
