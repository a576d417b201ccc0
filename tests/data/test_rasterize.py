"""keras_unet.data.rasterize: Labelme's pixel convention (pixel i spans i .. i + 1, vertices truncated to whole
pixels, outlines included), every shape type, against pixel sets worked out by hand."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import JSRT_DIR as JSRT
from conftest import SAMPLE_DIR
from keras_unet.data.phantom import make_phantom
from keras_unet.data.rasterize import LABELME_LINE_WIDTH, MAX_RADIUS, rasterize
from keras_unet.io import labelme
from keras_unet.io.images import read_image
from labelme_factory import dice


def _annotation(shapes, height=30, width=30) -> labelme.Annotation:
    return labelme.Annotation(Path("x.json"), None, None, height, width, list(shapes))


def _shape(kind, points, label="a", **extra) -> labelme.Shape:
    return labelme.Shape(label, kind, np.array(points, dtype=np.float64), **extra)


def _plane(kind, points, height=30, width=30, line_width=LABELME_LINE_WIDTH, **extra) -> np.ndarray:
    out, _ = rasterize(_annotation([_shape(kind, points, **extra)], height, width), ["a"], line_width)
    return out[..., 0]


def _expected(height, width, rows, cols) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[rows, cols] = 1
    return mask


def test_output_layout():
    out, stats = rasterize(_annotation([_shape("polygon", [[1, 1], [5, 1], [5, 5]])], 20, 30), ["a", "b"])
    assert out.shape == (20, 30, 2) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert stats.pixels == {"a": int(out[..., 0].sum()), "b": 0}


def test_rectangle_is_inclusive_and_truncates_its_corners():
    assert np.array_equal(_plane("rectangle", [[9, 9], [0, 0]]), _expected(30, 30, slice(0, 10), slice(0, 10)))
    # (1.2, 1.9) lies in pixel (1, 1), (4.6, 3.5) in pixel (4, 3): columns 1-4, rows 1-3
    assert np.array_equal(_plane("rectangle", [[1.2, 1.9], [4.6, 3.5]], 8, 8), _expected(8, 8, slice(1, 4), slice(1, 5)))


def test_polygon_vertices_on_both_sides_of_one_half_go_to_the_pixel_they_lie_in():
    # x 0.5 and 4.49 lie in pixels 0 and 4; y 0.51 and 3.5 in rows 0 and 3 (rounding would give 1, 4 and 1, 4)
    square = [[0.5, 0.51], [4.49, 0.51], [4.49, 3.5], [0.5, 3.5]]
    assert np.array_equal(_plane("polygon", square, 8, 8), _expected(8, 8, slice(0, 4), slice(0, 5)))
    # 1.4 -> 1, 5.5 -> 5, 1.6 -> 1, 4.99 -> 4: columns 1-5, rows 1-4, outline included
    square = [[1.4, 1.6], [5.5, 1.6], [5.5, 4.99], [1.4, 4.99]]
    assert np.array_equal(_plane("polygon", square, 8, 8), _expected(8, 8, slice(1, 5), slice(1, 6)))


def test_triangle_by_hand():
    # vertices lie in pixels (0, 0), (4, 0), (0, 4); row y holds columns 0 .. 4 - y, its hypotenuse included
    out = _plane("polygon", [[0.3, 0.2], [4.9, 0.7], [0.6, 4.5]], 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    for y in range(5):
        expected[y, : 5 - y] = 1
    assert np.array_equal(out, expected) and out.sum() == 15


def test_oriented_rectangle_is_its_rotated_box():
    # a square turned 45 degrees; its corners lie in pixels (5, 1), (9, 5), (5, 9), (1, 5): the diamond
    # |x - 5| + |y - 5| <= 4, rows of 1, 3, 5, 7, 9, 7, 5, 3, 1 pixels
    out = _plane("oriented_rectangle", [[5.3, 1.9], [9.8, 5.2], [5.1, 9.7], [1.6, 5.4]], 12, 12)
    y, x = np.mgrid[:12, :12]
    assert np.array_equal(out, (np.abs(x - 5) + np.abs(y - 5) <= 4).astype(np.uint8)) and out.sum() == 41
    upright = _plane("oriented_rectangle", [[1.2, 2.7], [6.9, 2.7], [6.9, 5.1], [1.2, 5.1]], 12, 12)
    assert np.array_equal(upright, _plane("rectangle", [[1.2, 2.7], [6.9, 5.1]], 12, 12))


def test_circle_of_radius_two_and_a_half():
    # centre (5, 5), radius 2.5: the pixel box trunc(2.5) .. trunc(7.5) = 2 .. 7, six pixels a side centred on
    # the coordinate 5 (between pixels 4 and 5); its rows keep 2, 4, 6, 6, 4, 2 pixels (the corner pixels,
    # centres 2.9 from the centre, are out; the edge-middle ones, 2.55, are in)
    out = _plane("circle", [[5, 5], [7.5, 5]], 10, 10)
    expected = np.zeros((10, 10), np.uint8)
    for row, (first, last) in zip(range(2, 8), [(4, 5), (3, 6), (2, 7), (2, 7), (3, 6), (4, 5)]):
        expected[row, first : last + 1] = 1
    assert np.array_equal(out, expected) and out.sum() == 24


def test_circle_is_symmetric_and_huge_ones_are_filled_by_pixel_centres():
    out = _plane("circle", [[10, 10], [13, 14]])  # radius 5: the pixel box 5 .. 15, centred on pixel 10
    half = out[5:16, 5:16]
    assert out.sum() == half.sum() and np.array_equal(half, half[::-1]) and np.array_equal(half, half[:, ::-1])
    big = MAX_RADIUS + 10
    out = _plane("circle", [[big + 3.0, 5.0], [3.0, 5.0]], 10, 10)  # its rim passes through x = 3
    assert out[:, 3:].all() and not out[:, :3].any()  # pixel 3's centre (3.5) is inside, pixel 2's (2.5) is not


def test_one_pixel_line_keeps_both_end_pixels():
    # (1.7, 2.2) and (6.3, 2.9) lie in pixels (1, 2) and (6, 2): row 2, columns 1-6
    out = _plane("line", [[1.7, 2.2], [6.3, 2.9]], 6, 10, line_width=1)
    assert np.array_equal(out, _expected(6, 10, 2, slice(1, 7)))
    assert _plane("linestrip", [[0, 0], [5, 0], [5, 5]], line_width=1).sum() == 11
    diagonal = _plane("line", [[0, 0], [10, 5]], line_width=1)
    _, labels = cv2.connectedComponents(diagonal, connectivity=8)
    assert labels.max() == 1 and diagonal[0, 0] and diagonal[5, 10]  # one unbroken stroke


def test_wide_line_has_flat_ends_and_labelmes_default_width():
    # a line through pixels (2, 7) .. (12, 7), 10 wide by default: 4 rows above, 5 below (rows 3-12), cut square
    # at columns 2 and 12 (round ends would reach columns -2 .. 16)
    out = _plane("line", [[2.5, 7.5], [12.5, 7.5]], 16, 16)
    assert LABELME_LINE_WIDTH == 10
    assert np.array_equal(out, _expected(16, 16, slice(3, 13), slice(2, 13))) and out.sum() == 110


def test_point_is_ignored_and_counted():
    out, stats = rasterize(_annotation([_shape("point", [[4, 4]])]), ["a"])
    assert out.sum() == 0 and stats.ignored_points == 1


def test_mask_with_whole_pixel_bounds_is_cut_to_its_box():
    box = np.zeros((3, 4), dtype=bool)
    box[1, 1:3] = True
    out = _plane("mask", [[10, 20], [13, 22]], mask=box)
    assert out.sum() == 2 and out[21, 11] and out[21, 12]
    big = np.ones((5, 5), dtype=bool)  # larger than the 2 x 3 box its bounds name: cut to the box
    assert np.array_equal(_plane("mask", [[1, 1], [3, 2]], 8, 8, mask=big), _expected(8, 8, slice(1, 3), slice(1, 4)))


def test_mask_at_a_fractional_corner_is_placed_at_the_rounded_corner():
    patch = np.zeros((3, 4), dtype=bool)
    patch[0, 0] = patch[2, 3] = True
    # top-left (2.6, 1.4) rounds to pixel (3, 1); fractional bounds keep the patch's own 4 x 3 size
    out = _plane("mask", [[2.6, 1.4], [5.6, 3.4]], 8, 8, mask=patch)
    assert np.array_equal(np.argwhere(out), [[1, 3], [3, 6]])
    # numpy rounds half to even, as Labelme does: (2.5, 3.5) -> pixel (2, 4)
    out = _plane("mask", [[2.5, 3.5], [5.5, 5.5]], 8, 8, mask=patch)
    assert np.array_equal(np.argwhere(out), [[4, 2], [6, 5]])


def test_points_outside_are_clipped_and_counted():
    out, stats = rasterize(_annotation([_shape("rectangle", [[-5, -5], [4, 4]])]), ["a"])
    assert out.sum() == 25 and stats.clipped_points == 1
    far = [[-1e12, -1e12], [1e12, -1e12], [1e12, 1e12], [-1e12, 1e12]]
    out, stats = rasterize(_annotation([_shape("polygon", far)], 8, 9), ["a"])
    assert out.all() and stats.clipped_points == 4
    out, _ = rasterize(_annotation([_shape("line", [[-1e12, 4], [1e12, 4]])], 8, 9), ["a"], 1)
    assert np.array_equal(out[..., 0], _expected(8, 9, 4, slice(None)))


def test_classes_overlap_and_unknown_labels_are_skipped():
    shapes = [
        _shape("polygon", [[0, 0], [9, 0], [9, 9], [0, 9]], label="rib"),
        _shape("polygon", [[5, 5], [14, 5], [14, 14], [5, 14]], label="clavicle"),
        _shape("polygon", [[0, 0], [3, 0], [3, 3]], label="heart"),
        _shape("circle", [[3, 3], [4, 4]], label="heart"),
    ]
    out, stats = rasterize(_annotation(shapes), ["clavicle", "rib"])
    assert out[7, 7].tolist() == [1, 1]  # the overlap is in both channels
    assert out[2, 2].tolist() == [0, 1] and out[12, 12].tolist() == [1, 0]
    assert stats.skipped == {"heart": 2} and stats.pixels == {"clavicle": 100, "rib": 100}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 20), st.integers(0, 20), st.integers(0, 15), st.integers(0, 15))
def test_integer_polygon_rectangle_matches_slice(x0, y0, w, h):
    corners = [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]
    expected = _expected(40, 40, slice(y0, y0 + h + 1), slice(x0, x0 + w + 1))
    assert np.array_equal(_plane("polygon", corners, 40, 40), expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(25, 75), st.integers(25, 75), st.integers(2, 22), st.integers(2, 22), st.floats(0, 180))
def test_polygons_traced_from_masks_give_the_masks_back(cx, cy, ax, ay, angle):
    # a polygon through a mask's boundary pixels (at x or x + 0.5, both in pixel x) rasterises back to the mask
    blob = cv2.ellipse(np.zeros((100, 100), np.uint8), (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    for offset in (0.0, 0.5):
        shapes = [_shape("polygon", c[:, 0, :] + offset) for c in contours if len(c) >= 3]
        out, _ = rasterize(_annotation(shapes, 100, 100), ["a"])
        assert np.array_equal(out[..., 0], blob)


@pytest.mark.slow
@pytest.mark.skipif(not JSRT.is_dir(), reason="research data folder ../shared/datasets/jsrt-scr-fold1 absent")
def test_every_jsrt_polygon_file_reproduces_its_expert_masks():
    json_files = sorted(JSRT.glob("*.json"))
    assert len(json_files) == 124, f"{JSRT} holds {len(json_files)} Labelme files, not 124"
    classes = ["left_clavicle", "right_clavicle", "left_lung", "right_lung", "heart"]
    scores = []
    for json_path in json_files:
        out, stats = rasterize(labelme.read_labelme(json_path), classes)
        assert not stats.skipped and stats.clipped_points == 0, json_path.name
        for index, name in enumerate(classes):
            expert = read_image(JSRT / "masks" / name / f"{json_path.stem}.png")
            scores.append(dice(out[..., index], expert))
            assert scores[-1] >= 0.99, (json_path.name, name, scores[-1])
    print(f"JSRT fold 1: {len(json_files)} images x {len(classes)} classes, Dice vs expert masks "
          f"min {min(scores):.4f} mean {np.mean(scores):.4f}")


def test_the_bundled_sample_polygons_are_in_labelmes_coordinates():
    # the phantom images are drawn with pixel centres at whole coordinates, their polygons written half a pixel on
    # (Labelme's pixel i spans i .. i + 1): the sample's masks sit on the drawn bones, closer than unshifted ones
    _, shapes = make_phantom(np.random.default_rng([0, 0]), 512)
    written = labelme.read_labelme(SAMPLE_DIR / "phantom_000.json").shapes
    for made, shape in zip(shapes[:2], written[:2]):  # the two clavicles
        assert shape.label == made["label"]
        np.testing.assert_allclose(shape.points, made["points"], atol=0.0051)  # written with 2 digits
        drawn = np.asarray(made["points"]) - 0.5  # as the image was drawn (cv2: pixel centres at whole numbers)
        reference = cv2.fillPoly(np.zeros((512, 512), np.uint8), [np.round(drawn * 16).astype(np.int32)], 1,
                                 lineType=cv2.LINE_8, shift=4)
        unshifted = _plane("polygon", drawn, 512, 512)
        assert dice(_plane("polygon", shape.points, 512, 512), reference) > dice(unshifted, reference) + 0.01
