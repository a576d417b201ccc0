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

