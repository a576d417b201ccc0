"""Export of a tiny trained run to every format: parity gates, metadata, mixed precision, refusal and atomicity."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from export_fixtures import CLASSES, SIZE, cached_run, exported, tiny_run  # noqa: F401 (session fixtures)
from keras_unet.cli import export as export_cli
from keras_unet.errors import ConfigError, ExportError
from keras_unet.export.options import ExportOptions
from keras_unet.io.files import write_json_atomic


def test_every_format_is_written_and_passes_parity(exported):
    out, metadata = exported
    from keras_unet.export.convert import FILES
    from keras_unet.export.options import FORMATS

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


def test_mixed_precision_run_exports(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import export_run, load_run
    from keras_unet.model.saving import is_mixed

    run = cached_run("mixed_run", tmp_path_factory, precision="mixed_float16", steps=2)
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
