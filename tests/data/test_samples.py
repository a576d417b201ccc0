"""keras_unet.data.samples: the mask cache, image + mask folders, the real SCR masks."""

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import JSRT_DIR as JSRT
from keras_unet.data.rasterize import rasterize
from keras_unet.data.samples import prepare_samples, resolve_classes
from keras_unet.errors import ConfigError, DataError
from keras_unet.io import labelme
from keras_unet.io.images import read_image
from labelme_factory import (SMALL_SHAPES, dice, document, gradient, labelme_pair, png_bytes, shape, small_dataset,
                             write_image, write_json)


# The rasteriser's own tests (every shape type, Labelme's pixel convention) are in tests/data/test_rasterize.py.


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
