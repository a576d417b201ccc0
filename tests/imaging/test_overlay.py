import colorsys

import cv2
import numpy as np
import pytest

from keras_unet.imaging import overlay
from keras_unet.imaging.overlay import class_colors, contact_sheet, draw_overlay, save_rgb, to_display

H, W = 120, 160


def scene():
    """A uint16 ramp image, a prediction square for class 0 and a shifted truth square."""
    image = np.tile(np.linspace(1000, 3000, W, dtype=np.float64), (H, 1)).astype(np.uint16)
    pred = np.zeros((H, W, 2), np.uint8)
    pred[20:80, 20:80, 0] = 1
    truth = np.zeros((H, W, 2), np.uint8)
    truth[30:90, 30:90, 0] = 1
    return image, pred, truth


def hue(rgb):
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0]


def test_class_colors_distinct_and_valid():
    for n in (1, 3, 7, 12):
        colors = class_colors(n)
        assert len(colors) == n and len(set(colors)) == n
        assert all(0 <= v <= 255 and isinstance(v, int) for c in colors for v in c)
    assert class_colors(2) == overlay.OKABE_ITO[:2]


def test_to_display_stretches_percentiles():
    image = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    out = to_display(image)
    assert out.dtype == np.uint8 and out.shape == (100, 100)
    assert out.min() == 0 and out.max() == 255
    assert out[0, 0] == 0 and out[-1, -1] == 255  # clipped beyond the 1st / 99th percentiles
    # 0..100 in a row: the 1st and 99th percentiles are 1 and 99, so v -> (v - 1) * 255 / 98, rounded and clipped:
    # 0 and 1 -> 0; 40 -> 101.48 -> 101; 60 -> 153.52 -> 154; 99 and 100 -> 255
    row = to_display(np.arange(101, dtype=np.uint16).reshape(1, 101))
    assert [int(row[0, v]) for v in (0, 1, 40, 60, 99, 100)] == [0, 0, 101, 154, 255, 255]
    assert to_display(np.full((4, 4), 7.0)).max() == 0  # constant image does not divide by zero


def test_overlay_shape_and_legend_band():
    image, pred, truth = scene()
    out = draw_overlay(image, pred, truth, classes=["femur", "tibia"], title="case 1")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[1] == W and out.shape[2] == 3
    assert out.shape[0] > H
    band = out[H:]
    assert (band == overlay.BAND_COLOR).all(axis=-1).mean() > 0.5  # mostly plain band
    assert (band == overlay.TEXT_COLOR).all(axis=-1).any()  # with text on it


def test_prediction_is_filled_in_class_colour():
    image, pred, truth = scene()
    out = draw_overlay(image, pred, truth, classes=["femur", "tibia"])
    color = class_colors(2)[0]
    # the display grey, in numpy: the 1st..99th percentiles of the ramp stretched over 0..255
    lo, hi = np.percentile(image.astype(np.float64), [1, 99])
    grey = np.clip(np.round((image.astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    y, x = 50, 50  # inside the prediction, away from the truth outline
    expected = np.round(grey[y, x] * (1 - overlay.FILL_ALPHA) + np.array(color) * overlay.FILL_ALPHA)
    np.testing.assert_allclose(out[y, x], expected, atol=1)
    assert abs(hue(out[y, x]) - hue(color)) < 0.02
    outside = out[100:110, 100:110]
    np.testing.assert_array_equal(outside, np.repeat(grey[100:110, 100:110, None], 3, axis=2))


def test_truth_outline_is_solid_and_differs_from_fill():
    image, pred, truth = scene()
    out = draw_overlay(image, pred, truth, classes=["femur", "tibia"])
    color = np.array(class_colors(2)[0])
    fill = out[50, 50].astype(int)
    edge = out[60, 30].astype(int)  # on the truth square's left edge, inside the prediction
    np.testing.assert_array_equal(edge, color)
    assert np.abs(edge - fill).sum() > 60
    row = out[60].astype(int).sum(axis=1)
    # 1 px line on the truth's own boundary pixels (column 30), a 1 px dark edge just outside (column 29);
    # inside, the fill starts at once (the outline must not hide thin structures)
    inside = out[60, 31].astype(int)
    assert row[29] < 20 and row[28] > 60 and inside.sum() > 60 and np.abs(inside - color).sum() > 60
    assert abs(hue(inside) - hue(color)) < 0.02  # the prediction fill


def test_overlay_without_truth():
    image, pred, truth = scene()
    with_truth = draw_overlay(image, pred, truth)
    without = draw_overlay(image, pred)
    assert without.shape[1] == W and without.dtype == np.uint8
    np.testing.assert_array_equal(without[50, 50], with_truth[50, 50])
    assert not (without[:H] == class_colors(2)[0]).all(axis=-1).any()  # no solid outline pixels


def test_overlay_accepts_2d_masks_and_checks_shapes():
    image, pred, truth = scene()
    out = draw_overlay(image, pred[..., 0], truth[..., 0], classes=["femur"])
    assert out.shape[1] == W
    with pytest.raises(ValueError):
        draw_overlay(image, pred[:50])
    with pytest.raises(ValueError):
        draw_overlay(image, pred, classes=["only one"])


def test_legend_wraps_many_classes_onto_more_lines():
    image = np.zeros((H, W), np.uint8)
    few = draw_overlay(image, np.zeros((H, W, 1), np.uint8), classes=["a"])
    many = draw_overlay(image, np.zeros((H, W, 9), np.uint8), classes=[f"long_class_name_{i}" for i in range(9)])
    assert many.shape[0] > few.shape[0]


def test_contact_sheet_grid_size():
    tiles = [np.full((40, 60, 3), 200, np.uint8)] * 4 + [np.zeros((30, 30), np.float32)]
    labels = [f"image {i}" for i in range(5)]
    cell_h = 64 + overlay.caption_height() + overlay._GAP
    cell_w = 64 + overlay._GAP
    sheet = contact_sheet(tiles, labels, columns=2, tile_size=64)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (3 * cell_h + overlay._GAP, 2 * cell_w + overlay._GAP, 3)
    default = contact_sheet(tiles, labels, tile_size=64)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert default.shape == (2 * cell_h + overlay._GAP, 3 * cell_w + overlay._GAP, 3)
    # the wide tile is letterboxed: full width, 2/3 of the height, centred
    tile = sheet[overlay._GAP:overlay._GAP + 64, overlay._GAP:overlay._GAP + 64]
    assert (tile[32] == 200).all() and (tile[0] == overlay.SHEET_COLOR).all()


def test_contact_sheet_checks_arguments():
    with pytest.raises(ValueError):
        contact_sheet([], [])
    with pytest.raises(ValueError):
        contact_sheet([np.zeros((4, 4, 3), np.uint8)], ["a", "b"])


def test_save_rgb_round_trip(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    path = tmp_path / "red.png"
    save_rgb(path, rgb)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["red.png"]
    with pytest.raises(ValueError):
        save_rgb(tmp_path / "bad.png", rgb.astype(np.float32))
