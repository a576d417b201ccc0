"""keras_unet.data.samples (and the rasteriser it uses): every shape type, the mask cache, image + mask folders."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import JSRT_DIR as JSRT
from keras_unet.data.rasterize import rasterize
from keras_unet.data.samples import prepare_samples, resolve_classes
from keras_unet.errors import ConfigError, DataError
from keras_unet.io import labelme
from keras_unet.io.images import read_image
from labelme_factory import (SMALL_SHAPES, dice, document, gradient, labelme_pair, png_bytes, shape, small_dataset,
                             write_image, write_json)


def _annotation(shapes, height=30, width=30) -> labelme.Annotation:
    return labelme.Annotation(Path("x.json"), None, None, height, width, list(shapes))


def _shape(kind, points, label="a", **extra) -> labelme.Shape:
    return labelme.Shape(label, kind, np.array(points, dtype=np.float64), **extra)


def _area(kind, points, line_width=3, **extra) -> int:
    out, _ = rasterize(_annotation([_shape(kind, points, **extra)]), ["a"], line_width)
    return int(out.sum())


# -- rasterising --------------------------------------------------------------------------------------


def test_output_layout():
    out, stats = rasterize(_annotation([_shape("polygon", [[1, 1], [5, 1], [5, 5]])], 20, 30), ["a", "b"])
    assert out.shape == (20, 30, 2) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert stats.pixels == {"a": int(out[..., 0].sum()), "b": 0}


def test_rectangle_is_inclusive():
    out, _ = rasterize(_annotation([_shape("rectangle", [[9, 9], [0, 0]])]), ["a"])
    assert out.sum() == 100 and out[:10, :10].all()  # pixels 0..9 on both axes, corners in any order


def test_polygon_square_includes_its_outline():
    assert _area("polygon", [[2, 2], [7, 2], [7, 7], [2, 7]]) == 36


def test_circle_is_pixels_within_the_radius():
    assert _area("circle", [[10, 10], [15, 10]]) == 81  # lattice points within distance 5
    out, _ = rasterize(_annotation([_shape("circle", [[10, 10], [13, 14]])]), ["a"])
    half = out[5:16, 5:16, 0]
    assert np.array_equal(half, half[::-1]) and np.array_equal(half, half[:, ::-1])  # symmetric


def test_lines_and_linestrips():
    assert _area("line", [[2, 5], [12, 5]], line_width=1) == 11
    assert _area("line", [[2, 5], [12, 5]], line_width=3) == 11 * 3 + 2 * 3  # 3 rows, round ends of radius 1.5
    assert _area("linestrip", [[0, 0], [5, 0], [5, 5]], line_width=1) == 11
    diagonal, _ = rasterize(_annotation([_shape("line", [[0, 0], [10, 5]])]), ["a"], 1)
    _, labels = cv2.connectedComponents(diagonal[..., 0], connectivity=8)
    assert labels.max() == 1 and diagonal[0, 0, 0] and diagonal[5, 10, 0]  # one unbroken stroke


def test_point_is_ignored_and_counted():
    out, stats = rasterize(_annotation([_shape("point", [[4, 4]])]), ["a"])
    assert out.sum() == 0 and stats.ignored_points == 1


def test_mask_shape_is_pasted_at_its_box():
    box = np.zeros((3, 4), dtype=bool)
    box[1, 1:3] = True
    out, _ = rasterize(_annotation([_shape("mask", [[10, 20], [13, 22]], mask=box)]), ["a"])
    assert out.sum() == 2 and out[21, 11, 0] and out[21, 12, 0]


def test_points_outside_are_clipped_and_counted():
    out, stats = rasterize(_annotation([_shape("rectangle", [[-5, -5], [4, 4]])]), ["a"])
    assert out.sum() == 25 and stats.clipped_points == 1
    far = [[-1e12, -1e12], [1e12, -1e12], [1e12, 1e12], [-1e12, 1e12]]
    out, stats = rasterize(_annotation([_shape("polygon", far)], 8, 9), ["a"])
    assert out.all() and stats.clipped_points == 4


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
    out, _ = rasterize(_annotation([_shape("polygon", corners)], 40, 40), ["a"])
    expected = np.zeros((40, 40), np.uint8)
    expected[y0 : y0 + h + 1, x0 : x0 + w + 1] = 1
    assert np.array_equal(out[..., 0], expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(25, 75), st.integers(25, 75), st.integers(2, 22), st.integers(2, 22), st.floats(0, 180))
def test_polygons_traced_from_masks_give_the_masks_back(cx, cy, ax, ay, angle):
    # The SCR convention: a polygon through a mask's boundary pixel centres rasterises back to the mask.
    blob = cv2.ellipse(np.zeros((100, 100), np.uint8), (cx, cy), (ax, ay), angle, 0, 360, 1, -1)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    shapes = [_shape("polygon", c[:, 0, :]) for c in contours if len(c) >= 3]
    out, _ = rasterize(_annotation(shapes, 100, 100), ["a"])
    assert np.array_equal(out[..., 0], blob)


# -- prepare_samples ----------------------------------------------------------------------------------

SHAPES = SMALL_SHAPES


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture
def dataset(tmp_path):
    return small_dataset(tmp_path / "data")


def test_prepare_samples_layout(dataset, tmp_path):
    lines = []
    samples = prepare_samples(dataset, ["clavicle", "rib"], tmp_path / "cache", log=lines.append)
    assert [s.stem for s in samples] == ["a", "sub__b"]
    cache = samples[0].image_path.parent.parent
    assert cache.parent == tmp_path / "cache"
    for sample in samples:
        assert sample.image_path == cache / "images" / f"{sample.stem}.png"
        assert sample.mask_paths == [cache / c / f"{sample.stem}.png" for c in ("clavicle", "rib")]
        assert np.array_equal(read_image(sample.image_path), gradient())
    assert sample.source == dataset / "sub" / "b.json"
    rib = read_image(samples[0].mask_paths[1])
    assert rib.dtype == np.uint8 and set(np.unique(rib)) == {0, 255} and (rib > 0).sum() == 100
    assert (read_image(samples[0].mask_paths[0]) == 0).all()
    assert lines[-1].startswith("2 samples, 2 regenerated")
    assert "skipped labels not in the class list: heart x2" in lines[-1]


def test_cache_reuse_and_regeneration(dataset, tmp_path):
    lines = []
    cache_root = tmp_path / "cache"
    samples = prepare_samples(dataset, ["rib"], cache_root, log=lines.append)
    before = _snapshot(cache_root)
    again = prepare_samples(dataset, ["rib"], cache_root, log=lines.append)
    assert again == samples and lines[-1].startswith("2 samples, 0 regenerated")
    after = _snapshot(cache_root)
    assert {p: t for p, t in after.items() if p.suffix == ".png"} == {
        p: t for p, t in before.items() if p.suffix == ".png"
    }

    # Editing a JSON (same size, same second) regenerates that entry only.
    json_a = dataset / "a.json"
    json_a.write_text(json_a.read_text().replace("10", "12"))
    prepare_samples(dataset, ["rib"], cache_root, log=lines.append)
    assert lines[-1].startswith("2 samples, 1 regenerated")
    assert (read_image(samples[0].mask_paths[0]) > 0).sum() == 144
    assert samples[1].mask_paths[0].stat().st_mtime_ns == before[samples[1].mask_paths[0]]

    # Replacing an image regenerates its entry.
    write_image(dataset / "sub" / "b.png", gradient()[::-1].copy())
    prepare_samples(dataset, ["rib"], cache_root, log=lines.append)
    assert lines[-1].startswith("2 samples, 1 regenerated")
    assert np.array_equal(read_image(samples[1].image_path), gradient()[::-1])

    # A deleted cached file is rebuilt; a new mtime alone is not a change.
    samples[0].mask_paths[0].unlink()
    os.utime(dataset / "sub" / "b.json")
    prepare_samples(dataset, ["rib"], cache_root, log=lines.append)
    assert lines[-1].startswith("2 samples, 1 regenerated") and samples[0].mask_paths[0].is_file()


def test_cache_key_depends_on_classes_and_line_width(dataset, tmp_path):
    one = prepare_samples(dataset, ["rib"], tmp_path / "c", log=None)
    two = prepare_samples(dataset, ["rib", "heart"], tmp_path / "c", log=None)
    three = prepare_samples(dataset, ["rib"], tmp_path / "c", line_width=5, log=None)
    assert len({s[0].image_path.parent.parent for s in (one, two, three)}) == 3


def test_removed_annotation_leaves_the_cache(dataset, tmp_path):
    first = prepare_samples(dataset, ["rib"], tmp_path / "c", log=None)
    (dataset / "a.json").unlink()
    second = prepare_samples(dataset, ["rib"], tmp_path / "c", log=None)
    assert [s.stem for s in second] == ["sub__b"]
    assert not first[0].image_path.exists() and not first[0].mask_paths[0].exists()


def test_data_folder_is_never_written(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_UNET_CACHE", str(tmp_path / "envcache"))
    before = _snapshot(dataset)
    samples = prepare_samples(dataset, ["rib"], log=None)
    assert samples[0].image_path.is_relative_to(tmp_path / "envcache")
    assert _snapshot(dataset) == before
    with pytest.raises(ConfigError, match="inside the data folder"):
        prepare_samples(dataset, ["rib"], dataset / "cache", log=None)
    assert _snapshot(dataset) == before


def test_uint16_and_embedded_images_are_cached_at_their_depth(tmp_path):
    deep = gradient(dtype=np.uint16) * 300
    write_json(tmp_path / "data" / "e.json", document(SHAPES, "gone.png", image_data=png_bytes(deep)))
    (sample,) = prepare_samples(tmp_path / "data", ["rib"], tmp_path / "c", log=None)
    cached = read_image(sample.image_path)
    assert cached.dtype == np.uint16 and np.array_equal(cached, deep)


def test_errors_name_the_file(dataset, tmp_path):
    write_json(dataset / "broken.json", document([shape("rib", [[1, 1]])], "a.png"))
    with pytest.raises(DataError, match="broken.json"):
        prepare_samples(dataset, ["rib"], tmp_path / "c", log=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Labelme"):
        prepare_samples(tmp_path / "empty", ["rib"], tmp_path / "c", log=None)
    with pytest.raises(ConfigError):
        prepare_samples(dataset, ["images"], tmp_path / "c", log=None)


# -- image + mask folders -----------------------------------------------------------------------------


def test_image_and_mask_folder(tmp_path):
    data = tmp_path / "data"
    write_image(data / "images" / "gray.png", gradient())
    write_image(data / "images" / "colour.jpg", np.dstack([gradient()] * 3))
    write_image(data / "images" / "unlabelled.png", gradient())
    full = np.zeros((20, 30), np.uint8)
    full[2:5, 3:9] = 255
    write_image(data / "masks" / "rib" / "gray.png", full)
    write_image(data / "masks" / "rib" / "colour.png", (full > 0).astype(np.uint8))  # 0/1 mask
    write_image(data / "masks" / "clavicle" / "gray.png", full)
    before = _snapshot(data)
    lines = []
    samples = prepare_samples(data, ["rib", "clavicle"], tmp_path / "c", log=lines.append)
    assert [s.stem for s in samples] == ["colour", "gray"]
    colour, gray = samples
    assert gray.image_path == data / "images" / "gray.png"  # used in place
    assert gray.mask_paths == [data / "masks" / "rib" / "gray.png", data / "masks" / "clavicle" / "gray.png"]
    assert colour.image_path.is_relative_to(tmp_path / "c")  # converted into the cache
    assert read_image(colour.image_path).ndim == 2
    for path in colour.mask_paths:
        assert path.is_relative_to(tmp_path / "c")
    assert np.array_equal(read_image(colour.mask_paths[0]), full)
    assert (read_image(colour.mask_paths[1]) == 0).all()
    assert "1 images without any mask left out" in lines[-1] and "1 missing masks taken as empty" in lines[-1]
    assert _snapshot(data) == before
    prepare_samples(data, ["rib", "clavicle"], tmp_path / "c", log=lines.append)
    assert lines[-1].startswith("2 samples, 0 regenerated")


def test_image_and_mask_size_mismatch(tmp_path):
    write_image(tmp_path / "d" / "x.png", gradient())
    write_image(tmp_path / "d" / "masks" / "rib" / "x.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match="rib/x.png: mask is 5x5 but its image is 30x20"):
        prepare_samples(tmp_path / "d", ["rib"], tmp_path / "c", log=None)


def test_image_and_mask_folder_needs_each_class_folder(tmp_path):
    write_image(tmp_path / "d" / "x.png", gradient())
    write_image(tmp_path / "d" / "masks" / "rib" / "x.png", np.zeros((20, 30), np.uint8))
    with pytest.raises(DataError, match="no folder for class clavicle; the folders are: rib"):
        prepare_samples(tmp_path / "d", ["rib", "clavicle"], tmp_path / "c", log=None)


# -- which classes -------------------------------------------------------------------------------------

SQUARE = [[2, 2], [7, 2], [7, 7], [2, 7]]


def test_resolve_classes(tmp_path):
    labelme_pair(tmp_path, "a", [shape("rib", SQUARE), shape("clavicle", SQUARE), shape("_background_", SQUARE)])
    assert resolve_classes(["x", "y"], tmp_path) == ["x", "y"]
    assert resolve_classes(" x, y ,", tmp_path) == ["x", "y"]
    assert resolve_classes(None, tmp_path) == ["clavicle", "rib"]
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\nrib\n")
    assert resolve_classes("", tmp_path) == ["rib"]
    with pytest.raises(ConfigError):
        resolve_classes("a,a", tmp_path)


def test_resolve_classes_from_mask_folders(tmp_path):
    (tmp_path / "masks" / "b").mkdir(parents=True)
    (tmp_path / "masks" / "a").mkdir()
    assert resolve_classes([], tmp_path) == ["a", "b"]


# -- real data ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not JSRT.is_dir(), reason="research data folder ../shared/datasets/jsrt-scr-fold1 absent")
def test_real_scr_polygons_reproduce_expert_masks():
    classes = ["left_clavicle", "right_clavicle"]
    json_files = sorted(JSRT.glob("*.json"))[:10]
    assert len(json_files) == 10, f"{JSRT} holds {len(json_files)} Labelme files, not at least 10"
    for json_path in json_files:
        annotation = labelme.read_labelme(json_path)
        out, stats = rasterize(annotation, classes)
        assert set(stats.skipped) == {"heart", "left_lung", "right_lung"} and stats.clipped_points == 0
        for index, name in enumerate(classes):
            expert_path = JSRT / "masks" / name / f"{json_path.stem}.png"
            assert expert_path.is_file(), f"no expert mask {expert_path}"
            expert = read_image(expert_path)
            assert expert.any(), f"{expert_path} is empty"
            assert dice(out[..., index], expert) >= 0.99, (json_path.name, name)
