import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from keras_unet.imaging import metrics
from keras_unet.imaging.metrics import (assd, confusion, dice, hd95, iou, mask_boundary, precision, recall,
                                        score_masks, summarize, surface_distances)


def square(top, left, size=4, shape=(8, 8)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def points(shape, *yx):
    m = np.zeros(shape, np.uint8)
    for y, x in yx:
        m[y, x] = 1
    return m


A = square(2, 2)  # rows 2-5, cols 2-5
B = square(2, 3)  # the same square one pixel to the right
EMPTY = np.zeros((8, 8), np.uint8)


def test_confusion_of_shifted_squares():
    # overlap is 4 rows x 3 columns = 12; each square has 16 pixels
    assert confusion(A, B) == (12, 4, 4, 64 - 20)


def test_overlap_scores_by_hand():
    assert dice(A, B) == pytest.approx(2 * 12 / (16 + 16))
    assert iou(A, B) == pytest.approx(12 / 20)
    assert precision(A, B) == pytest.approx(12 / 16)
    assert recall(A, B) == pytest.approx(12 / 16)


def test_precision_and_recall_differ_when_prediction_is_inside_truth():
    inner = square(3, 3, size=2)  # 4 pixels inside A's 16
    assert precision(inner, A) == 1.0
    assert recall(inner, A) == pytest.approx(4 / 16)


def test_nonzero_values_and_bools_count_as_foreground():
    assert dice(A * 255, B.astype(bool)) == pytest.approx(0.75)


@pytest.mark.parametrize("score", [dice, iou, precision, recall])
def test_both_empty_scores_one(score):
    assert score(EMPTY, EMPTY) == 1.0


@pytest.mark.parametrize("score", [dice, iou, precision, recall])
def test_empty_prediction_scores_zero(score):
    assert score(EMPTY, A) == 0.0


@pytest.mark.parametrize("score", [dice, iou, precision, recall])
def test_empty_truth_scores_zero(score):
    assert score(A, EMPTY) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(A, np.zeros((8, 9)))


def test_boundary_is_the_ring_and_includes_image_edge():
    ring = mask_boundary(A)
    assert ring.sum() == 12 and not ring[3:5, 3:5].any()
    full = mask_boundary(np.ones((4, 5)))
    expected = np.ones((4, 5), bool)
    expected[1:3, 1:4] = False
    np.testing.assert_array_equal(full, expected)


def test_surface_distances_of_one_pixel_shift():
    forward, backward = surface_distances(A, B)
    assert forward.dtype == np.float64
    # each ring has 12 pixels: 6 lie on the other ring (top/bottom rows), 6 are one pixel away
    assert sorted(forward) == [0.0] * 6 + [1.0] * 6
    assert sorted(backward) == [0.0] * 6 + [1.0] * 6
    assert hd95(A, B) == 1.0
    assert assd(A, B) == 0.5


def test_three_four_five_triangle_is_exact():
    p = points((10, 10), (1, 1))
    t = points((10, 10), (4, 5))  # 3 rows down, 4 columns across
    assert hd95(p, t) == pytest.approx(5.0, abs=1e-6)
    assert assd(p, t) == pytest.approx(5.0, abs=1e-6)


def test_spacing_scales_distances():
    p = points((10, 10), (1, 1))
    t = points((10, 10), (4, 5))
    assert hd95(p, t, spacing=(0.5, 0.5)) == pytest.approx(2.5, abs=1e-6)
    assert assd(p, t, spacing=0.5) == pytest.approx(2.5, abs=1e-6)


def test_anisotropic_spacing_single_points():
    p = points((10, 10), (1, 1))
    t = points((10, 10), (4, 5))
    # rows 2 mm apart, columns 1 mm: sqrt((3*2)^2 + (4*1)^2) = sqrt(52)
    assert hd95(p, t, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(52), rel=1e-12)


def test_anisotropic_spacing_changes_the_nearest_point():
    p = points((6, 6), (0, 0))
    t = points((6, 6), (2, 0), (0, 3))
    # isotropic: p->t = min(2, 3) = 2; t->p = 2 and 3; pooled [2, 2, 3]
    assert assd(p, t) == pytest.approx(7 / 3)
    assert hd95(p, t) == pytest.approx(2 + 0.9 * 1)  # linear interpolation at rank 0.95 * 2 = 1.9
    # rows 2 mm apart: (2, 0) is 4 mm away, (0, 3) 3 mm; p->t = 3; t->p = 4 and 3; pooled [3, 4, 3]
    forward, backward = surface_distances(p, t, spacing=(2.0, 1.0))
    assert list(forward) == [3.0]
    assert sorted(backward) == [3.0, 4.0]
    assert assd(p, t, spacing=(2.0, 1.0)) == pytest.approx(10 / 3)
    assert hd95(p, t, spacing=(2.0, 1.0)) == pytest.approx(3.9)


def _brute_force_distances(features, queries, spacing):
    """Distance from each query pixel to every feature pixel, the smallest kept: slow but plainly right."""
    fy, fx = np.nonzero(features)
    ys, xs = np.nonzero(queries)
    d2 = ((ys[:, None] - fy[None, :]) * spacing[0]) ** 2 + ((xs[:, None] - fx[None, :]) * spacing[1]) ** 2
    return np.sqrt(d2.min(axis=1))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5), (0.3, 0.7)])
def test_distance_field_agrees_with_a_brute_force_search(spacing):
    rng = np.random.default_rng(0)
    for _ in range(3):
        features = rng.random((40, 50)) > 0.97
        queries = rng.random((40, 50)) > 0.9
        fast = metrics._distances_to(features, queries, spacing)
        np.testing.assert_allclose(fast, _brute_force_distances(features, queries, spacing), rtol=1e-9, atol=1e-9)


def test_distance_edge_cases():
    assert hd95(EMPTY, EMPTY) == 0.0 and assd(EMPTY, EMPTY) == 0.0
    assert hd95(A, EMPTY) == math.inf and assd(EMPTY, A) == math.inf
    assert hd95(A, A) == 0.0


def test_bad_spacing_is_an_error():
    with pytest.raises(ValueError, match="spacing"):
        hd95(A, B, spacing=(0.0, 1.0))


def test_score_masks_rows():
    pred = np.stack([A, EMPTY], axis=-1)
    truth = np.stack([B, EMPTY], axis=-1)
    rows = score_masks(pred, truth, ["femur", "patella"])
    assert [r["class"] for r in rows] == ["femur", "patella"]
    assert set(rows[0]) == {"class", "dice", "iou", "precision", "recall", "hd95", "assd"}
    assert rows[0]["dice"] == pytest.approx(0.75) and rows[0]["hd95"] == 1.0
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0


def test_score_masks_in_millimetres():
    pred = points((10, 10), (1, 1))[..., None]
    truth = points((10, 10), (4, 5))[..., None]
    iso = score_masks(pred, truth, ["x"], spacing=(0.5, 0.5))[0]
    assert iso["hd95"] == pytest.approx(5.0) and iso["hd95_mm"] == pytest.approx(2.5)
    aniso = score_masks(pred, truth, ["x"], spacing=(2.0, 1.0))[0]
    assert aniso["assd_mm"] == pytest.approx(math.sqrt(52))


def test_score_masks_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="class"):
        score_masks(np.stack([A, B], -1), np.stack([A, B], -1), ["one"])


def test_summarize_statistics_and_undefined_counts():
    def row(name, image, d, h):
        return {"class": name, "image": image, "dice": d, "hd95": h}

    rows = [  # one list per image, as score_masks returns them
        [row("a", "i1", 0.5, 2.0), row("b", "i1", 1.0, 0.0)],
        [row("a", "i2", 0.9, 4.0), row("b", "i2", 0.0, math.inf)],
        [row("a", "i3", 0.7, 3.0), row("b", "i3", 0.0, math.inf)],
    ]
    s = summarize(rows, ["a", "b"])
    a = s["a"]
    assert s["a"]["n_images"] == 3
    assert a["dice"]["mean"] == pytest.approx(0.7)
    assert a["dice"]["median"] == pytest.approx(0.7)
    assert a["dice"]["std"] == pytest.approx(np.std([0.5, 0.9, 0.7]))
    assert a["dice"]["worst"] == 0.5 and a["dice"]["worst_image"] == "i1"
    assert a["hd95"]["worst"] == 4.0 and a["hd95"]["worst_image"] == "i2"
    b = s["b"]["hd95"]
    assert b["n"] == 1 and b["n_undefined"] == 2 and b["mean"] == 0.0
    assert "assd" not in s["a"]


def test_summarize_with_no_finite_value_gives_none():
    s = summarize([{"class": "a", "dice": 0.0, "hd95": math.inf}], ["a", "missing"])
    assert s["a"]["hd95"]["mean"] is None and s["a"]["hd95"]["n_undefined"] == 1
    assert s["missing"]["n_images"] == 0 and s["missing"]["dice"]["n"] == 0


masks = arrays(np.uint8, (6, 7), elements=st.integers(0, 1))


@settings(max_examples=40, deadline=None)
@given(masks, masks)
def test_overlap_properties(p, t):
    d, j = dice(p, t), iou(p, t)
    assert 0.0 <= d <= 1.0 and d == dice(t, p)
    assert d == pytest.approx(2 * j / (1 + j))
    assert precision(p, t) == recall(t, p)
    assert hd95(p, t) == hd95(t, p)
