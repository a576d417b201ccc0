"""Export of a tiny trained run to every format: parity gates, metadata, mixed precision, refusal and atomicity."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_unet.config import Config, ModelConfig
from keras_unet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["left_bone", "right_bone"]
SIZE = 64
HEIGHT, WIDTH = 60, 84  # not square: the letterbox pads
_CACHE: dict = {}


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with a bright ellipse in each half and its (H, W, 2) 0/1 masks."""
    image = rng.normal(40, 8, (HEIGHT, WIDTH))
    masks = np.zeros((HEIGHT, WIDTH, 2), np.uint8)
    for c, (low, high) in enumerate(((0.15, 0.35), (0.65, 0.85))):
        centre = (int(rng.uniform(low, high) * WIDTH), int(rng.uniform(0.3, 0.7) * HEIGHT))
        axes = (int(rng.uniform(6, 12)), int(rng.uniform(8, 18)))
        plane = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.ellipse(plane, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        masks[..., c] = plane
        image[plane > 0] += 150
    return np.clip(image, 0, 255).astype(np.uint8), masks


def write_data(folder: Path, count: int = 16, seed: int = 0) -> Path:
    """An image + masks/<class>/ data folder of synthetic scenes."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    for c in CLASSES:
        (folder / "masks" / c).mkdir(parents=True)
    for i in range(count):
        image, masks = scene(rng)
        cv2.imwrite(str(folder / "images" / f"s{i:02d}.png"), image)
        for c, name in enumerate(CLASSES):
            cv2.imwrite(str(folder / "masks" / name / f"s{i:02d}.png"), masks[..., c] * 255)
    return folder


def training_arrays(data: Path, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Prepared images and letterboxed masks, as the numpy preprocessing makes them."""
    from keras_unet.preprocess import letterbox, prepare

    xs, ys = [], []
    for path in sorted((data / "images").glob("*.png")):
        xs.append(prepare(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), config)[0])
        masks = np.stack([cv2.imread(str(data / "masks" / c / path.name), 0) / 255.0 for c in CLASSES], -1)
        ys.append(letterbox(masks.astype(np.float32), config.image_size)[0])
    return np.stack(xs), np.stack(ys)


def make_run(folder: Path, precision: str = "float32", steps: int = 60, sharpen: float = 4.0) -> Path:
    """A run folder (model.keras, config.json, split.json) of a tiny U-Net trained briefly on synthetic scenes.

    A few dozen steps leave the probabilities soft; scaling the final logits by `sharpen` keeps the masks and
    makes them as confident as longer training would, so the parity gates measure conversion error only.
    """
    import keras

    from keras_unet.losses import BceDiceLoss
    from keras_unet.model import model_from_config

    data = write_data(folder / "data")
    run = folder / "run"
    run.mkdir()
    config = Config(data=str(data), classes=list(CLASSES), image_size=SIZE, precision=precision,
                    cache_dir=str(folder / "cache"), model=ModelConfig(depth=2, base_filters=4))
    config.postprocess.tta = False
    x, y = training_arrays(data, config)
    repeats = (1 + steps * 8 // 12, 1, 1, 1)  # one epoch of `steps` batches of 8, all of one shape: traced once
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    try:
        model = model_from_config(config)
        model.compile(keras.optimizers.Adam(1e-2), loss=BceDiceLoss(), jit_compile=False, run_eagerly=steps < 5)
        model.fit(np.tile(x[:12], repeats)[:steps * 8], np.tile(y[:12], repeats)[:steps * 8], batch_size=8,
                  epochs=1, verbose=0)
        logits = model.get_layer("logits")
        logits.set_weights([w * sharpen for w in logits.get_weights()])
        model.save(run / "model.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    config.save(run / "config.json")
    stems = [f"s{i:02d}" for i in range(16)]
    (run / "split.json").write_text(json.dumps({"train": stems[:12], "val": stems[12:]}))
    return run


def cached_run(name: str, tmp_path_factory, **kwargs) -> Path:
    """make_run once per test session."""
    if name not in _CACHE:
        _CACHE[name] = make_run(tmp_path_factory.mktemp(name), **kwargs)
    return _CACHE[name]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return cached_run("export_run", tmp_path_factory)


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    """Every format of the tiny run, exported once."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export import ExportOptions, export_run

    if "exported" not in _CACHE:  # test_edge.py imports this fixture: export once per session all the same
        out = tmp_path_factory.mktemp("exports") / "all"
        _CACHE["exported"] = out, export_run(tiny_run / "model.keras", out, ExportOptions(parity_images=4), log=None)
    return _CACHE["exported"]


def test_every_format_is_written_and_passes_parity(exported):
    out, metadata = exported
    from keras_unet.export import FORMATS, FILES

    assert list(metadata["artifacts"]) == list(FORMATS)
    assert metadata["parity_passed"] is True
    for fmt, entry in metadata["artifacts"].items():
        assert (out / FILES[fmt]).exists() and entry["bytes"] > 0
        assert entry["parity_passed"], (fmt, entry["parity"])
        assert entry["parity"]["dice"] >= (0.98 if fmt == "tflite_int8" else 0.999)
    assert metadata["artifacts"]["tflite"]["parity"]["max_abs_diff"] < 1e-4
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_metadata_describes_the_run(exported, tiny_run):
    out, metadata = exported
    from keras_unet.config import config_from_dict, load_config
    from keras_unet.export import sha256_file

    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk["artifacts"].keys() == metadata["artifacts"].keys()
    assert config_from_dict(on_disk["config"]) == load_config(tiny_run / "config.json")
    assert on_disk["source_model_sha256"] == sha256_file(tiny_run / "model.keras")
    assert on_disk["classes"] == CLASSES and on_disk["image_size"] == SIZE and on_disk["channels"] == 1
    assert on_disk["input"]["layout"] == "NHWC" and on_disk["input"]["range"] == [0.0, 1.0]
    int8 = on_disk["artifacts"]["tflite_int8"]
    assert int8["input"]["dtype"] == "uint8" and int8["output"]["dtype"] == "uint8"
    assert int8["input"]["scale"] > 0
    assert on_disk["artifacts"]["onnx"]["input"] == "image"


def test_onnx_has_a_dynamic_batch(exported):
    onnx = pytest.importorskip("onnx")
    from keras_unet.onnx_model import OnnxModel

    out, _ = exported
    proto = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    probs = OnnxModel(out / "model.onnx").predict(np.zeros((3, SIZE, SIZE, 1), np.float32))
    assert probs.shape == (3, SIZE, SIZE, len(CLASSES)) and probs.dtype == np.float32


def test_mixed_precision_run_exports(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export import ExportOptions, export_run, is_mixed, load_run

    run = cached_run("mixed_run", tmp_path_factory, precision="mixed_float16", steps=2)
    assert is_mixed(load_run(run / "model.keras")[0])
    out = tmp_path_factory.mktemp("mixed") / "export"
    metadata = export_run(run / "model.keras", out, ExportOptions(formats=("tflite",), parity_images=4), log=None)
    assert metadata["parity_passed"] and (out / "model.tflite").is_file()
    assert metadata["float32_rebuild"]["max_abs_diff"] < 0.05


def test_existing_folder_is_refused(tiny_run, tmp_path):
    from keras_unet.export import ExportOptions, export_run

    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ConfigError, match="already exists"):
        export_run(tiny_run / "model.keras", out, ExportOptions(formats=("tflite",)), log=None)
    assert (out / "keep.txt").read_text() == "old"
    with pytest.raises(ConfigError, match="source model"):
        export_run(tiny_run / "model.keras", tiny_run, ExportOptions(overwrite=True), log=None)
    assert (tiny_run / "model.keras").is_file()


def _crash_midway(model, path, size):
    """Stand-in for the SavedModel export that leaves a half-written file and crashes."""
    Path(path).mkdir(parents=True)
    (Path(path) / "saved_model.pb").write_bytes(b"half")
    raise RuntimeError("simulated converter crash")


@pytest.mark.parametrize("old", [False, True])
def test_failed_export_leaves_nothing_half_written(tiny_run, tmp_path, monkeypatch, old):
    import keras_unet.export as export

    out = tmp_path / "export"
    if old:
        out.mkdir()
        (out / "model.tflite").write_bytes(b"old model")
    monkeypatch.setattr(export, "write_saved_model", _crash_midway)
    options = export.ExportOptions(formats=("saved_model", "tflite"), parity_images=2, overwrite=old)
    with pytest.raises(RuntimeError, match="simulated"):
        export.export_run(tiny_run / "model.keras", out, options, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["export"] if old else [])
    if old:
        assert [p.name for p in out.iterdir()] == ["model.tflite"]
        assert (out / "model.tflite").read_bytes() == b"old model"


def test_conversion_errors_name_the_format(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    import keras_unet.export as export

    def crash(*args, **kwargs):
        raise ValueError("unsupported op")

    monkeypatch.setattr(export, "convert_onnx", crash)
    with pytest.raises(export.ExportError, match="onnx: conversion failed \\(unsupported op\\)"):
        export.export_run(tiny_run / "model.keras", tmp_path / "export", export.ExportOptions(formats=("onnx",)),
                          log=None)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_is_reported_and_exits_non_zero(tiny_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tf2onnx")
    import keras_unet.export as export

    script = runpy.run_path(str(REPO / "export.py"))  # the command line, run in this process
    monkeypatch.setattr(export, "dice", lambda a, b: 0.5)  # as if the artefact's masks disagreed with Keras
    out = tmp_path / "export"
    code = script["run_main"](script["main"], ["--model", str(tiny_run / "model.keras"), "--out", str(out),
                                               "--formats", "onnx", "--parity-images", "2"])
    printed = capsys.readouterr()
    assert code == 1
    assert "PARITY FAILED: onnx (model.onnx): Dice 0.5000 < 0.999" in printed.err
    assert "ms/image" in printed.out and "FAILED" in printed.out
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["parity_passed"] is False and metadata["artifacts"]["onnx"]["parity_passed"] is False


def test_calibration_folder_stands_in_for_missing_data(tiny_run, tmp_path):
    pytest.importorskip("tf2onnx")
    from keras_unet.config import load_config
    from keras_unet.export import ExportOptions, export_run

    run = tmp_path / "moved_run"
    run.mkdir()
    shutil.copy(tiny_run / "model.keras", run / "model.keras")
    config = load_config(tiny_run / "config.json")
    images = Path(config.data) / "images"
    config.data = str(tmp_path / "gone")
    config.save(run / "config.json")
    with pytest.raises(ConfigError, match="--calibration"):
        export_run(run / "model.keras", tmp_path / "a", ExportOptions(formats=("onnx",)), log=None)
    options = ExportOptions(formats=("onnx",), calibration=str(images), parity_images=3)
    metadata = export_run(run / "model.keras", tmp_path / "b", options, log=None)
    assert metadata["parity"]["images"] == 3 and metadata["parity_passed"]


def test_bad_options_are_refused():
    from keras_unet.export import ExportOptions, parse_formats

    assert parse_formats("onnx, tflite") == ("tflite", "onnx")
    with pytest.raises(ConfigError, match="unknown format"):
        parse_formats("tflite,coreml")
    with pytest.raises(ConfigError, match="int8-dice"):
        ExportOptions(int8_dice=1.5).validate()
