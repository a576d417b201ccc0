"""Export of a tiny trained run to every format: parity gates, metadata, mixed precision, refusal and atomicity."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import CLASSES, HEIGHT, SIZE, WIDTH, cached_run, exported, tiny_run  # noqa: F401 (session fixtures)
from keras_unet.cli import export as export_cli
from keras_unet.errors import ConfigError, ExportError
from keras_unet.export.options import ExportOptions
from keras_unet.io.files import write_json_atomic


def test_every_format_is_written_and_passes_parity(exported):
    out, metadata = exported
    from export_fixtures import BASIC_FORMATS
    from keras_unet.export.convert import FILES

    assert list(metadata["artifacts"]) == list(BASIC_FORMATS)
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
    from keras_unet.io.files import sha256_file

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
    from keras_unet.infer.runtimes import OnnxModel

    out, _ = exported
    proto = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    probs = OnnxModel(out / "model.onnx").predict(np.zeros((3, SIZE, SIZE, 1), np.float32))
    assert probs.shape == (3, SIZE, SIZE, len(CLASSES)) and probs.dtype == np.float32


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_run_exports(tmp_path_factory, precision):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import export_run, load_run
    from keras_unet.model.saving import is_mixed

    run = cached_run(f"{precision}_run", tmp_path_factory, precision=precision, steps=2)
    assert is_mixed(load_run(run / "model.keras")[0])
    out = tmp_path_factory.mktemp("mixed") / "export"
    metadata = export_run(run / "model.keras", out, ExportOptions(formats=("tflite",), parity_images=4), log=None)
    assert metadata["parity_passed"] and (out / "model.tflite").is_file()
    assert metadata["float32_rebuild"]["max_abs_diff"] < 0.05


def test_existing_folder_is_refused(tiny_run, tmp_path):
    from keras_unet.export.exporter import export_run

    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ConfigError, match="already exists"):
        export_run(tiny_run / "model.keras", out, ExportOptions(formats=("tflite",)), log=None)
    assert (out / "keep.txt").read_text() == "old"
    with pytest.raises(ConfigError, match=re.escape(f"{tiny_run}: holds the source {tiny_run / 'model.keras'}; write")):
        export_run(tiny_run / "model.keras", tiny_run, ExportOptions(overwrite=True), log=None)
    assert (tiny_run / "model.keras").is_file()


def _crash_midway(model, path, size):
    """Stand-in for the SavedModel export that leaves a half-written file and crashes."""
    Path(path).mkdir(parents=True)
    (Path(path) / "saved_model.pb").write_bytes(b"half")
    raise RuntimeError("simulated converter crash")


@pytest.mark.parametrize("old", [False, True])
def test_failed_export_leaves_nothing_half_written(tiny_run, tmp_path, monkeypatch, old):
    from keras_unet.export import exporter

    out = tmp_path / "export"
    if old:
        out.mkdir()
        (out / "model.tflite").write_bytes(b"old model")
    monkeypatch.setattr(exporter, "write_saved_model", _crash_midway)
    options = ExportOptions(formats=("saved_model", "tflite"), parity_images=2, overwrite=old)
    with pytest.raises(RuntimeError, match="simulated"):
        exporter.export_run(tiny_run / "model.keras", out, options, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["export"] if old else [])
    if old:
        assert [p.name for p in out.iterdir()] == ["model.tflite"]
        assert (out / "model.tflite").read_bytes() == b"old model"


def test_conversion_errors_name_the_format(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    from keras_unet.export import convert, exporter

    def crash(*args, **kwargs):
        raise ValueError("unsupported op")

    monkeypatch.setattr(convert, "convert_onnx", crash)
    with pytest.raises(ExportError, match="onnx: conversion failed \\(unsupported op\\)"):
        exporter.export_run(tiny_run / "model.keras", tmp_path / "export", ExportOptions(formats=("onnx",)), log=None)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_is_reported_and_exits_non_zero(tiny_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tf2onnx")
    from keras_unet.export import parity

    monkeypatch.setattr(parity, "dice", lambda a, b: 0.5)  # as if the artefact's masks disagreed with Keras
    out = tmp_path / "export"
    code = export_cli.main(["--model", str(tiny_run / "model.keras"), "--out", str(out), "--formats", "onnx",
                            "--parity-images", "2"])
    printed = capsys.readouterr()
    assert code == 1
    assert "PARITY FAILED: onnx (model.onnx): Dice 0.5000 < 0.999" in printed.err
    assert "ms/image" in printed.out and "FAILED" in printed.out
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["parity_passed"] is False and metadata["artifacts"]["onnx"]["parity_passed"] is False


def test_calibration_folder_stands_in_for_missing_data(tiny_run, tmp_path):
    pytest.importorskip("tf2onnx")
    from keras_unet.config import load_config
    from keras_unet.export.exporter import export_run

    run = tmp_path / "moved_run"
    run.mkdir()
    shutil.copy(tiny_run / "model.keras", run / "model.keras")
    config = load_config(tiny_run / "config.json")
    images = Path(config.data) / "images"
    config.data = str(tmp_path / "gone")
    write_json_atomic(run / "config.json", config.to_dict())
    with pytest.raises(ConfigError, match="--calibration"):
        export_run(run / "model.keras", tmp_path / "a", ExportOptions(formats=("onnx",)), log=None)
    options = ExportOptions(formats=("onnx",), calibration=str(images), parity_images=3)
    metadata = export_run(run / "model.keras", tmp_path / "b", options, log=None)
    assert metadata["parity"]["images"] == 3 and metadata["parity_passed"]


def test_bad_options_are_refused():
    from keras_unet.export.options import parse_formats

    assert parse_formats("onnx, tflite") == ("tflite", "onnx")
    with pytest.raises(ConfigError, match="unknown format"):
        parse_formats("tflite,coreml")
    with pytest.raises(ConfigError, match="int8-dice"):
        ExportOptions(int8_dice=1.5).validate()
    with pytest.raises(ConfigError, match="--float-dice must be between 0 and 1, got 1.01"):
        ExportOptions(float_dice=1.01).validate()  # a gate above 1 can never pass: refused before any work


# -- calibration and parity images --------------------------------------------------------------------


def _labelme_folder(folder: Path, broken: bool) -> Path:
    """Two annotated images (one JSON unreadable when broken) and one without annotation."""
    from labelme_factory import document, gradient, shape, write_image, write_json

    for name in ("a", "b", "c"):
        write_image(folder / f"{name}.png", gradient(HEIGHT, WIDTH))
    box = [[10, 10], [30, 10], [30, 40], [10, 40]]
    write_json(folder / "a.json", document([shape(CLASSES[0], box)], "a.png", HEIGHT, WIDTH))
    write_json(folder / "b.json", "{ not json" if broken else document([shape(CLASSES[1], box)], "b.png", HEIGHT,
                                                                          WIDTH))
    return folder


def test_calibration_folder_with_a_broken_labelme_file_is_an_error_naming_it(tiny_run, tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    folder = _labelme_folder(tmp_path / "calibration", broken=True)
    out = tmp_path / "export"
    code = export_cli.main(["--model", str(tiny_run / "model.keras"), "--out", str(out), "--formats", "tflite_int8",
                            "--calibration", str(folder)])
    err = capsys.readouterr().err
    assert code == 2
    # one line, naming the JSON (was: the error swallowed and the folder's three PNGs calibrated on as plain images)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {folder / 'b.json'}: "), err
    assert not out.exists()


def test_calibration_folder_images_plain_or_from_its_samples(tiny_run, tmp_path):
    from keras_unet.config import load_config
    from keras_unet.export.exporter import folder_images

    config = load_config(tiny_run / "config.json")
    config.cache_dir = str(tmp_path / "cache")
    plain = tmp_path / "plain"
    for name in ("x.png", "y.jpg", "z.png"):
        write_image_file(plain / name)
    (plain / "notes.txt").write_text("not an image")
    assert folder_images(plain, config) == [plain / "x.png", plain / "y.jpg", plain / "z.png"]
    # a Labelme folder: its annotated images only (c.png has no JSON)
    labelled = folder_images(_labelme_folder(tmp_path / "labelme", broken=False), config)
    assert len(labelled) == 2
    # an image + masks/ folder (the run's own data): its 16 images, each with masks
    assert len(folder_images(Path(config.data), config)) == 16


def write_image_file(path: Path) -> Path:
    from labelme_factory import gradient, write_image

    return write_image(path, gradient(HEIGHT, WIDTH))


def test_calibration_and_parity_use_at_most_the_asked_number_of_images_and_the_int8_gate(tiny_run, tmp_path,
                                                                                        monkeypatch, capsys):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export import convert

    fed, given = [], []  # what the int8 converter's representative dataset yields, and the files it was made from
    original = convert.calibration_data

    def counting(paths, config):
        given.append([Path(p).stem for p in paths])
        generate = original(paths, config)

        def counted():
            for item in generate():
                fed.append(item[0].shape)
                yield item
        return counted

    monkeypatch.setattr(convert, "calibration_data", counting)
    train_stems = json.loads((tiny_run / "split.json").read_text())["train"]  # 12 training, 4 validation images
    base = ["--model", str(tiny_run / "model.keras"), "--formats", "tflite_int8"]

    # 5 of the 12 training images; 50 asked, 4 validation images there; a gate of 1.0 no int8 model meets here
    code = export_cli.main([*base, "--out", str(tmp_path / "a"), "--calibration-images", "5",
                            "--parity-images", "50", "--int8-dice", "1.0"])
    err = capsys.readouterr().err
    metadata = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert len(fed) == 5 and all(shape == (1, SIZE, SIZE, 1) for shape in fed)
    assert len(set(given[0])) == 5 and set(given[0]) <= set(train_stems)
    assert metadata["parity"]["images"] == 4
    dice = metadata["artifacts"]["tflite_int8"]["parity"]["dice"]
    assert dice < 1.0  # the premise of the gate: int8 flips a few pixels near 0.5
    assert code == 1 and "PARITY FAILED: tflite_int8 (model_int8.tflite)" in err
    assert metadata["parity_passed"] is False

    # 200 asked, all 12 training images fed; 3 of the 4 validation images; a lenient gate passes
    fed.clear()
    given.clear()
    code = export_cli.main([*base, "--out", str(tmp_path / "b"), "--calibration-images", "200",
                            "--parity-images", "3", "--int8-dice", "0.5"])
    err = capsys.readouterr().err
    metadata = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert len(fed) == 12 and sorted(given[0]) == sorted(train_stems)
    assert metadata["parity"]["images"] == 3
    assert code == 0 and "PARITY FAILED" not in err and metadata["parity_passed"] is True


def test_the_model_card_travels_with_the_export(tiny_run, tmp_path):
    pytest.importorskip("tf2onnx")
    from keras_unet.export.exporter import export_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = "# Model card: tiny\n\n- classes: a, b\n"
    (run / "model_card.md").write_text(card)
    export_run(run / "model.keras", tmp_path / "with", ExportOptions(formats=("onnx",), parity_images=2), log=None)
    assert (tmp_path / "with" / "model_card.md").read_text() == card
    (run / "model_card.md").unlink()  # a run from before model cards: the export simply has none
    export_run(run / "model.keras", tmp_path / "without", ExportOptions(formats=("onnx",), parity_images=2), log=None)
    assert not (tmp_path / "without" / "model_card.md").exists()
