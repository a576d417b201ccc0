"""keras_unet.imaging.crops: the box around a structure, zero-padded crops, and pasting a crop's result back."""

import numpy as np
import pytest

from keras_unet.imaging import crops


def test_bounds_are_those_of_the_largest_component():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:4, 3:5] = 1  # 4 pixels
    mask[10:15, 8:20] = 1  # 60 pixels: rows 10-14, columns 8-19
    assert crops.largest_component_bounds(mask) == (10, 8, 15, 20)
    assert crops.largest_component_bounds(np.zeros((5, 5))) is None


def test_square_box_by_hand():
    # 5 x 12 bounds, margin 0.25: side = ceil(12 * 1.5) = 18, centred on (12.5, 14) -> top floor(3.5) = 3, left 5
    assert crops.square_box((10, 8, 15, 20), 0.25) == (3, 5, 18)
    assert crops.square_box((0, 0, 4, 4), 0.0) == (0, 0, 4)
    assert crops.structure_box(np.zeros((4, 4)), 0.5) is None


def test_crop_zero_pads_past_the_border_and_paste_puts_it_back():
    image = np.arange(1, 7 * 9 + 1, dtype=np.float32).reshape(7, 9)
    box = (-2, 6, 5)  # rows -2..2, columns 6..10 of a 7 x 9 image
    piece = crops.crop(image, box)
    expected = np.zeros((5, 5), np.float32)
    expected[2:, :3] = image[0:3, 6:9]
    np.testing.assert_array_equal(piece, expected)
    plane = np.zeros((7, 9), np.float32)
    pasted = crops.paste(plane, piece + 100, box)
    np.testing.assert_array_equal(pasted[0:3, 6:9], image[0:3, 6:9] + 100)
    pasted[0:3, 6:9] = 0
    assert not pasted.any() and not plane.any()  # only the box changed, in a copy


def test_crop_keeps_trailing_axes_and_refuses_a_box_outside_the_image():
    image = np.ones((6, 6, 3), np.uint8)
    assert crops.crop(image, (1, 1, 3)).shape == (3, 3, 3)
    with pytest.raises(ValueError, match="outside"):
        crops.crop(image, (10, 0, 3))



def test_one_box_per_component_largest_first_and_above_the_minimum_area():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:4, 3:5] = 1  # 4 pixels
    mask[10:15, 8:20] = 1  # 60 pixels
    assert crops.component_bounds(mask) == [(10, 8, 15, 20), (2, 3, 4, 5)]
    assert crops.component_bounds(mask, min_area=5) == [(10, 8, 15, 20)]
    assert crops.structure_boxes(mask, 0.25) == [(3, 5, 18)]  # one box: around the largest
    # 2 x 2 bounds, margin 0.25: side ceil(2 x 1.5) = 3, top floor((2 + 4 - 3) / 2) = 1, left floor(5 / 2) = 1
    assert crops.structure_boxes(mask, 0.25, per_component=True) == [(3, 5, 18), (1, 2, 3)]
    assert crops.structure_boxes(mask, 0.25, per_component=True, min_area=5) == [(3, 5, 18)]
    assert crops.structure_boxes(np.zeros((4, 4)), 0.25, per_component=True) == []


def test_paste_all_takes_the_mean_or_max_where_boxes_overlap():
    plane = np.full((6, 8), 0.5, np.float32)
    patches, boxes = [np.full((4, 4), 0.2), np.full((4, 4), 0.8)], [(0, 0, 4), (2, 2, 4)]
    mean = crops.paste_all(plane, patches, boxes)
    expected = plane.copy()
    expected[0:4, 0:4] = 0.2
    expected[2:6, 2:6] = 0.8
    expected[2:4, 2:4] = 0.5  # (0.2 + 0.8) / 2
    np.testing.assert_allclose(mean, expected)
    expected[2:4, 2:4] = 0.8
    np.testing.assert_allclose(crops.paste_all(plane, patches, boxes, "max"), expected)
    one = crops.paste_all(plane, patches[:1], boxes[:1])
    np.testing.assert_array_equal(one, crops.paste(plane, patches[0], boxes[0]))
    assert (plane == 0.5).all()  # a copy
    with pytest.raises(ValueError, match="overlap"):
        crops.paste_all(plane, patches, boxes, "sum")
