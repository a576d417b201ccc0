"""Error overlays (true / false positives, false negatives per class) and outlines thin enough for thin structures,
checked pixel by pixel against hand-made masks."""

import numpy as np
import pytest

from keras_unet.imaging import overlay
from keras_unet.imaging.overlay import ERROR_ALPHA, ERROR_COLORS, class_colors, draw_overlay, error_masks, line_width


def checkerboard(h=10, w=10):
    """0 / 200 checkerboard: its 1st and 99th percentiles are 0 and 200, so it displays as exactly 0 and 255."""
    board = (np.add.outer(np.arange(h), np.arange(w)) % 2 * 200).astype(np.uint8)
    return board, np.where(board > 0, 255, 0)


def blend(grey, color, alpha):
    return np.round(grey * (1 - alpha) + np.array(color, float) * alpha).astype(int)


# Okabe-Ito bluish green, vermillion and blue, written out here so that a swap in the module shows
TP, FP, FN = (0, 158, 115), (213, 94, 0), (0, 114, 178)


def test_error_colours_are_the_documented_ones():
    assert ERROR_COLORS == {"TP": TP, "FP": FP, "FN": FN}


def test_error_overlay_colours_each_pixel_by_its_kind():
    image, grey = checkerboard()
    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:6] = 1  # 16 pixels
    pred = np.zeros((10, 10), np.uint8)
    pred[4:8, 4:8] = 1  # 16 pixels, 4 of them (rows and columns 4, 5) also in the truth
    kinds = np.full((10, 10), "", object)
    kinds[2:6, 2:6] = "FN"
    kinds[4:8, 4:8] = "FP"
    kinds[4:6, 4:6] = "TP"
    assert (kinds == "TP").sum() == 4 and (kinds == "FP").sum() == 12 and (kinds == "FN").sum() == 12
    out = draw_overlay(image, pred, truth, classes=["bone"], errors=True)
    assert out.shape[1] == 10 and out.shape[0] > 10  # the legend band below
    for y in range(10):
        for x in range(10):
            kind = kinds[y, x]
            color = {"TP": TP, "FP": FP, "FN": FN}.get(kind)
            expected = blend(grey[y, x], color, ERROR_ALPHA) if kind else [grey[y, x]] * 3
            np.testing.assert_array_equal(out[y, x].astype(int), expected, err_msg=f"{(y, x)} {kind or 'none'}")


def test_error_masks_counts():
    truth = np.zeros((10, 10, 2), np.uint8)
    pred = np.zeros((10, 10, 2), np.uint8)
    truth[0:3, 0:3, 0] = 1
    pred[1:3, 1:4, 0] = 1  # class 0: TP 2 x 2 = 4, FP column 3 of rows 1, 2 = 2, FN 9 - 4 = 5
    pred[9, 9, 1] = 1  # class 1: one FP, nothing else
    kinds = error_masks(pred, truth)
    assert [int(kinds[k][..., 0].sum()) for k in ("TP", "FP", "FN")] == [4, 2, 5]
    assert [int(kinds[k][..., 1].sum()) for k in ("TP", "FP", "FN")] == [0, 1, 0]
    with pytest.raises(ValueError):
        error_masks(pred[..., :1], truth)


def test_errors_of_another_class_show_over_true_positives():
    image, grey = checkerboard()
    truth = np.zeros((10, 10, 2), np.uint8)
    pred = np.zeros((10, 10, 2), np.uint8)
    truth[1, 1, 0] = pred[1, 1, 0] = 1  # TP of class 0 ...
    pred[1, 1, 1] = 1  # ... and FP of class 1: the error shows
    truth[2, 2, 0] = pred[2, 2, 0] = 1
    truth[2, 2, 1] = 1  # TP of class 0, FN of class 1
    pred[3, 3, 0] = 1
    truth[3, 3, 1] = 1  # FP of class 0, FN of class 1: the miss shows
    out = draw_overlay(image, pred, truth, classes=["a", "b"], errors=True).astype(int)
    for (y, x), color in {(1, 1): FP, (2, 2): FN, (3, 3): FN}.items():
        np.testing.assert_array_equal(out[y, x], blend(grey[y, x], color, ERROR_ALPHA))


def test_error_legend_shows_the_three_colours_and_needs_truth():
    image = np.zeros((60, 300), np.uint8)
    pred = np.zeros((60, 300, 1), np.uint8)
    out = draw_overlay(image, pred, pred, classes=["bone"], errors=True, title="case")
    band = out[60:].reshape(-1, 3)
    for color in ERROR_COLORS.values():  # each swatch: its colour over mid-grey at the error alpha
        assert (band == blend(128, color, ERROR_ALPHA)).all(axis=-1).any()
    assert (band == overlay.TEXT_COLOR).all(axis=-1).any()
    with pytest.raises(ValueError, match="ground truth"):
        draw_overlay(image, pred, errors=True)


def test_line_width_is_one_pixel_up_to_512_and_grows_gently():
    assert [line_width((s, s)) for s in (64, 300, 512)] == [1, 1, 1]
    assert [line_width((600, 1024)), line_width((2048, 1800)), line_width((4096, 10))] == [2, 3, 4]


def ramp(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size x size 16-bit horizontal ramp and the grey (0..255) the overlay shows it as: its 1st..99th
    percentile stretched, worked out here in plain numpy."""
    image = np.tile(np.arange(size, dtype=np.uint16), (size, 1))
    lo, hi = np.percentile(image.astype(float), [1, 99])
    return image, np.clip(np.round((image.astype(float) - lo) * 255 / (hi - lo)), 0, 255).astype(int)


def test_outline_does_not_hide_a_thin_structure():
    """A 3 px wide truth strip at 512 px: 1 px outline on its edge pixels, the prediction fill in its middle."""
    image, grey = ramp(512)
    truth = np.zeros((512, 512), np.uint8)
    truth[100:400, 200:203] = 1
    pred = truth.copy()
    out = draw_overlay(image, pred, truth, classes=["rib"]).astype(int)
    color = np.array(class_colors(1)[0])
    y = 250
    np.testing.assert_array_equal(out[y, 200], color)  # the outline, on the strip's own edge pixels
    np.testing.assert_array_equal(out[y, 202], color)
    np.testing.assert_array_equal(out[y, 201], blend(grey[y, 201], color, overlay.FILL_ALPHA))  # fill shows
    np.testing.assert_array_equal(out[y, 199], [0, 0, 0])  # 1 px dark edge outside
    np.testing.assert_array_equal(out[y, 203], [0, 0, 0])
    np.testing.assert_array_equal(out[y, 198], [grey[y, 198]] * 3)  # and nothing beyond it
    np.testing.assert_array_equal(out[y, 204], [grey[y, 204]] * 3)


def test_outline_is_two_pixels_at_1024():
    image, grey = ramp(1024)
    truth = np.zeros((1024, 1024), np.uint8)
    truth[100:200, 100:200] = 1
    out = draw_overlay(image, np.zeros_like(truth), truth, classes=["a"]).astype(int)
    color = np.array(class_colors(1)[0])
    row = out[150]
    for x in (100, 101, 198, 199):
        np.testing.assert_array_equal(row[x], color, err_msg=str(x))
    np.testing.assert_array_equal(row[99], [0, 0, 0])  # 1 px dark edge (half the line width)
    np.testing.assert_array_equal(row[200], [0, 0, 0])
    for x in (98, 102, 150, 197, 201):
        np.testing.assert_array_equal(row[x], [grey[150, x]] * 3, err_msg=str(x))  # untouched
