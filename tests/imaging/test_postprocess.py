import cv2
import numpy as np
import pytest

from keras_unet.config import PostprocessConfig
from keras_unet.errors import ConfigError
from keras_unet.imaging.postprocess import (clean_masks, count_components, fill_holes, keep_largest,
                                            mask_to_polygons, remove_small, stray_components, threshold)


def grid(text):
    """Mask from rows of '.' and '#'."""
    return np.array([[c == "#" for c in row] for row in text.split()], np.uint8)


# three components: 4 pixels, 3 pixels joined only at corners (8-connected), 1 pixel
THREE = grid("""
##.....
##...#.
....#..
...#...
.......
......#
""")


def test_threshold_single_value_is_strictly_above():
    probs = np.array([[[0.2], [0.5]], [[0.51], [0.9]]])
    out = threshold(probs, 0.5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [1, 1]])


def test_threshold_per_channel():
    probs = np.full((2, 2, 2), 0.4)
    out = threshold(probs, [0.3, 0.6])
    np.testing.assert_array_equal(out[..., 0], np.ones((2, 2)))
    np.testing.assert_array_equal(out[..., 1], np.zeros((2, 2)))


def test_threshold_count_must_match_channels():
    with pytest.raises(ValueError):
        threshold(np.zeros((2, 2, 3)), [0.5, 0.5])


def test_count_and_stray_components_use_8_connectivity():
    assert count_components(THREE) == 3
    assert stray_components(THREE, 1) == 2
    assert stray_components(THREE, 5) == 0
    assert count_components(np.zeros((3, 3))) == 0


def test_remove_small():
    expected = grid("""
    ##.....
    ##...#.
    ....#..
    ...#...
    .......
    .......
    """)
    np.testing.assert_array_equal(remove_small(THREE, 2), expected)
    np.testing.assert_array_equal(remove_small(THREE, 0), THREE)
    assert remove_small(THREE, 5).sum() == 0


def test_keep_largest():
    expected = grid("""
    ##.....
    ##.....
    .......
    .......
    .......
    .......
    """)
    np.testing.assert_array_equal(keep_largest(THREE, 1), expected)
    assert keep_largest(THREE, 2).sum() == 7
    np.testing.assert_array_equal(keep_largest(THREE, 10), THREE)


def test_fill_holes_fills_enclosed_background_only():
    mask = grid("""
    #####..
    #...#..
    #.#.#..
    #####..
    .......
    ...#.#.
    ...#.#.
    """)
    expected = grid("""
    #####..
    #####..
    #####..
    #####..
    .......
    ...#.#.
    ...#.#.
    """)
    out = fill_holes(mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_diagonal_wall_encloses_4_connected_background():
    mask = grid("""
    .....
    ..#..
    .#.#.
    ..#..
    .....
    """)
    out = fill_holes(mask)
    assert out[2, 2] == 1 and out.sum() == 5


def test_fill_holes_leaves_bays_open_to_the_border():
    mask = grid("""
    ####
    #..#
    #..#
    """)
    np.testing.assert_array_equal(fill_holes(mask), mask)


def probabilities():
    """Two classes on 8x8: class 'a' has a ring (with hole) plus a stray pixel, class 'b' is a faint square."""
    a = grid("""
    ........
    .####...
    .#..#...
    .#..#...
    .####...
    ........
    ......#.
    ........
    """).astype(np.float32) * 0.9
    b = np.zeros((8, 8), np.float32)
    b[5:8, 0:3] = 0.4
    return np.stack([a, b], axis=-1)


def test_clean_masks_full_pipeline():
    settings = PostprocessConfig(threshold=0.5, thresholds={"b": 0.3}, keep_largest={"a": 1}, min_area=0,
                                 fill_holes=True)
    out = clean_masks(probabilities(), ["a", "b"], settings)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 2)
    expected_a = np.zeros((8, 8), np.uint8)
    expected_a[1:5, 1:5] = 1  # stray pixel gone, hole filled
    np.testing.assert_array_equal(out[..., 0], expected_a)
    expected_b = np.zeros((8, 8), np.uint8)
    expected_b[5:8, 0:3] = 1  # per-class threshold 0.3 lets 0.4 through
    np.testing.assert_array_equal(out[..., 1], expected_b)


def test_clean_masks_min_area_applies_to_every_class():
    settings = PostprocessConfig(thresholds={"b": 0.3}, min_area=10, fill_holes=False)
    out = clean_masks(probabilities(), ["a", "b"], settings)
    assert out[6, 6, 0] == 0 and out[..., 0].sum() == 12  # ring kept (12 px), hole kept
    assert out[..., 1].sum() == 0  # 9-pixel square dropped


def test_clean_masks_disabled_only_thresholds():
    settings = PostprocessConfig(enabled=False, keep_largest={"a": 1}, min_area=100)
    out = clean_masks(probabilities(), ["a", "b"], settings)
    # the plain 0.5 threshold and nothing else: the ring, its hole and the stray pixel of 'a'; 'b' (0.4) is empty
    np.testing.assert_array_equal(out, (probabilities() > 0.5).astype(np.uint8))
    assert out[..., 0].sum() == 12 + 1 and out[6, 6, 0] == 1 and out[..., 1].sum() == 0


def test_clean_masks_rejects_unknown_class_names():
    with pytest.raises(ConfigError, match="femr"):
        clean_masks(probabilities(), ["a", "b"], PostprocessConfig(keep_largest={"femr": 1}))


def test_polygons_of_a_rectangle():
    mask = np.zeros((6, 8), np.uint8)
    mask[1:4, 2:6] = 1  # rows 1-3, columns 2-5
    polygons = mask_to_polygons(mask, min_area=1)
    assert len(polygons) == 1
    p = polygons[0]
    assert p.dtype == np.float64 and p.shape == (4, 2)
    assert {tuple(v) for v in p} == {(2.0, 1.0), (5.0, 1.0), (5.0, 3.0), (2.0, 3.0)}  # x, y


def test_polygons_drop_small_components_and_ignore_holes():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:8, 5:8] = 0  # hole
    mask[15:17, 15:17] = 1  # a 2 x 2 stray: 4 pixels, under min_area
    polygons = mask_to_polygons(mask, min_area=5)
    assert len(polygons) == 1
    out = np.zeros_like(mask)
    cv2.fillPoly(out, [np.round(polygons[0]).astype(np.int32)], 1)
    expected = np.zeros_like(mask)
    expected[2:12, 2:12] = 1  # the outer square, its hole filled; the stray gone
    np.testing.assert_array_equal(out, expected)


def smooth_blob(rng, size=256):
    noise = cv2.resize(rng.random((16, 16)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    noise = cv2.GaussianBlur(noise, (0, 0), 6)
    yy, xx = np.mgrid[:size, :size]
    radius = rng.uniform(20, 90)
    field = 1.0 - np.hypot(yy - size / 2, xx - size / 2) / radius + (noise - noise.mean()) * 3
    return fill_holes(keep_largest((field > 0).astype(np.uint8), 1))


def thin_shape(rng, size=256):
    mask = np.zeros((size, size), np.uint8)
    path = np.cumsum(rng.normal(0, 8, (15, 2)), axis=0) + size / 2
    cv2.polylines(mask, [np.round(path).astype(np.int32)], False, 1, int(rng.integers(9, 12)))
    return fill_holes(mask)


def rasterise(polygons, shape):
    out = np.zeros(shape, np.uint8)
    for p in polygons:
        cv2.fillPoly(out, [np.round(p).astype(np.int32)], 1)
    return out


@pytest.mark.parametrize("make", [smooth_blob, thin_shape])
def test_polygon_round_trip(make):
    rng = np.random.default_rng(7)
    for _ in range(4):
        mask = make(rng)
        back = rasterise(mask_to_polygons(mask), mask.shape)
        overlap = np.logical_and(back, mask).sum()
        assert 2 * overlap / (back.sum() + mask.sum()) >= 0.98


def _whole_image_reference(mask, n_largest, min_area):
    """remove_small, keep_largest and fill_holes computed over the whole image, as they were before they worked
    inside the foreground's box."""
    m = (mask > 0).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= min_area
    keep[0] = False
    small = keep[labels].astype(np.uint8) if min_area > 1 else m
    _, labels, stats, _ = cv2.connectedComponentsWithStats(small, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas[1:], kind="stable") + 1
    keep = np.zeros(len(areas), dtype=bool)
    keep[order[:n_largest]] = True
    largest = keep[labels].astype(np.uint8)
    background = np.pad(1 - largest, 1, constant_values=1)
    _, labels = cv2.connectedComponents(background, connectivity=4)
    return small, largest, (labels[1:-1, 1:-1] != labels[0, 0]).astype(np.uint8)


@pytest.mark.parametrize("seed", range(40))
def test_the_foreground_box_gives_what_the_whole_image_gives(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, size=2)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(0, 6)):  # rings (holes), bars and specks, some cut by the border
        y, x, r = rng.integers(-5, h + 5), rng.integers(-5, w + 5), rng.integers(1, 12)
        cv2.circle(mask, (int(x), int(y)), int(r), 1, thickness=int(rng.choice([-1, 1, 2])))
    mask |= (rng.random((h, w)) < rng.choice([0.0, 0.02, 0.3])).astype(np.uint8)
    n, min_area = int(rng.integers(0, 3)), int(rng.integers(0, 8))
    small, largest, filled = _whole_image_reference(mask, n, min_area)
    np.testing.assert_array_equal(remove_small(mask, min_area), small)
    np.testing.assert_array_equal(keep_largest(small, n), largest)
    np.testing.assert_array_equal(fill_holes(largest), filled)
    from keras_unet.imaging.crops import component_bounds

    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    expected = sorted((int(y), int(x), int(y + hh), int(x + ww)) for x, y, ww, hh, a in stats[1:] if a >= max(1, min_area))
    assert sorted(component_bounds(mask, min_area)) == expected
