"""A run with a refine stage exports both models in every format, and every runtime runs the chain from the export
exactly as the Keras run folder does (slow: each format is converted twice)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO
from export_fixtures import CLASSES, REFINE_SIZE, chain_exported, refine_run  # noqa: F401 (session fixtures)

pytestmark = pytest.mark.slow


def _val_images(run: Path) -> list[np.ndarray]:
    from keras_unet.config import load_config

    data = Path(load_config(run / "config.json").data) / "images"
    return [cv2.imread(str(data / f"s{i}.png"), cv2.IMREAD_UNCHANGED) for i in (12, 13, 14, 15)]


def test_both_stages_in_every_format_and_the_chain_gated(chain_exported, refine_run):
    from keras_unet.config import load_config
    from keras_unet.export.options import DEFAULT_FORMATS, INT8_FORMATS

    out, metadata = chain_exported
    on_disk = json.loads((out / "metadata.json").read_text())
    assert list(on_disk["artifacts"]) == list(DEFAULT_FORMATS) and on_disk["parity_passed"] is True
    refine = on_disk["refine"]
    fine = load_config(refine_run / "refine" / "config.json")
    assert refine["config"] == fine.to_dict() and refine["image_size"] == REFINE_SIZE
    assert refine["blend"] == 0.5 and refine["crop"]["margin"] == fine.crops.margin and refine["classes"] == CLASSES
    assert refine["parity_crops"] == 8  # both bones in each of the 4 validation images
    for fmt, entry in on_disk["artifacts"].items():
        stages = entry["parity"]["stages"]
        assert list(stages) == ["first", "refine"]
        assert (out / entry["file"]).exists() and (out / entry["refine"]["file"]).exists()
        assert entry["refine"]["file"] == f"refine/{entry['file']}"
        gate = 0.98 if fmt in INT8_FORMATS else 0.999
        assert entry["parity"]["min_dice"] == gate and entry["parity_passed"], (fmt, entry["parity"])
        assert min(entry["parity"]["dice"], stages["first"]["dice"], stages["refine"]["dice"]) >= gate
    assert on_disk["artifacts"]["tflite"]["parity"]["max_abs_diff"] < 1e-4
    shape = on_disk["artifacts"]["tflite_int8"]["refine"]["input"]["shape"]
    assert shape[1:] == [REFINE_SIZE, REFINE_SIZE, 1]


@pytest.mark.parametrize("name", ["model.tflite", "model.onnx", "saved_model", "model_int8.tflite", "model_int8.onnx"])
def test_every_runtime_runs_the_chain_as_the_run_folder_does(chain_exported, refine_run, name):
    from keras_unet.imaging.metrics import dice
    from keras_unet.infer.load import load_predictor
    from keras_unet.infer.predictor import RefinedPredictor

    out, _ = chain_exported
    keras_chain, exported = load_predictor(refine_run), load_predictor(out / name)
    assert isinstance(keras_chain, RefinedPredictor) and isinstance(exported, RefinedPredictor)
    assert exported.fine.config.image_size == REFINE_SIZE and exported.config.refine.blend == 0.5
    assert not isinstance(load_predictor(out / name, refine=False), RefinedPredictor)
    for image in _val_images(refine_run):
        (want_probs, want), (probs, masks) = keras_chain.segment(image), exported.segment(image)
        first_alone = load_predictor(out / name, refine=False).predict_probs(image)
        assert np.abs(probs - first_alone).max() > 0.05  # the refine stage changed the probabilities
        if "int8" in name:
            assert all(dice(masks[..., c], want[..., c]) > 0.95 for c in range(len(CLASSES)))
        else:
            np.testing.assert_allclose(probs, want_probs, atol=1e-4)
            np.testing.assert_array_equal(masks, want)


def test_evaluate_and_predict_on_the_export_folder_as_on_the_run(chain_exported, refine_run, tmp_path):
    from keras_unet.cli import evaluate as evaluate_cli
    from keras_unet.config import load_config

    out, _ = chain_exported
    data = load_config(refine_run / "config.json").data
    scores = {}
    for name, model in (("keras", refine_run), ("export", out)):  # an export folder runs its model.tflite chain
        assert evaluate_cli.main(["--model", str(model), "--input", data, "--out", str(tmp_path / name)]) == 0
        scores[name] = json.loads((tmp_path / name / "summary.json").read_text())
    for c in CLASSES:
        assert scores["export"]["metrics"][c]["dice"]["mean"] == pytest.approx(
            scores["keras"]["metrics"][c]["dice"]["mean"], abs=1e-6)
    from keras_unet.cli import predict as predict_cli
    from keras_unet.infer.load import load_predictor

    image = Path(data) / "images" / "s12.png"
    assert predict_cli.main(["--model", str(out), "--input", str(image), "--out", str(tmp_path / "masks")]) == 0
    want = load_predictor(refine_run).segment(cv2.imread(str(image), cv2.IMREAD_UNCHANGED))[1]
    for c, name in enumerate(CLASSES):
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "masks" / name / "s12.png"), 0), want[..., c] * 255)


def test_edge_runner_runs_the_chain_without_tensorflow(chain_exported, refine_run, tmp_path):
    from keras_unet.config import load_config
    from keras_unet.infer.load import load_predictor

    out, _ = chain_exported
    shutil.copytree(out, tmp_path / "export", ignore=shutil.ignore_patterns("saved_model"))
    fake = tmp_path / "no_tensorflow"
    for name in ("tensorflow", "keras"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this device')\n")
    image = Path(load_config(refine_run / "config.json").data) / "images" / "s12.png"
    masks = tmp_path / "masks"
    for model in ("model_int8.tflite", "model.onnx"):
        result = subprocess.run([sys.executable, "-m", "keras_unet.edge", "--model", str(tmp_path / "export" / model),
                                 "--input", str(image), "--out", str(masks / model), "--threads", "1"],
                                capture_output=True, text=True, timeout=300,
                                env={"PYTHONPATH": f"{fake}:{REPO}", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        want = load_predictor(out / model).segment(cv2.imread(str(image), cv2.IMREAD_UNCHANGED))[1]
        for c, name in enumerate(CLASSES):
            np.testing.assert_array_equal(cv2.imread(str(masks / model / name / "s12.png"), 0), want[..., c] * 255)


def test_no_refine_exports_the_first_stage_alone(refine_run, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import export_run
    from keras_unet.export.options import ExportOptions
    from keras_unet.infer.load import load_predictor
    from keras_unet.infer.predictor import RefinedPredictor

    lines = []
    metadata = export_run(refine_run, tmp_path / "e", ExportOptions(formats=("tflite",), parity_images=2, refine=False),
                          log=lines.append)
    assert "refine" not in metadata and not (tmp_path / "e" / "refine").exists()
    assert any("refine stage is left out (--no-refine)" in line for line in lines)
    assert not isinstance(load_predictor(tmp_path / "e" / "model.tflite"), RefinedPredictor)


def test_the_other_quantisation_schemes_export_both_stages(refine_run, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.exporter import export_run
    from keras_unet.export.options import ExportOptions
    from keras_unet.infer.runtimes import TFLiteModel

    formats = ("tflite_int8_mixed", "tflite_int16x8", "tflite_dynamic")
    metadata = export_run(refine_run, tmp_path / "e", ExportOptions(formats=formats, parity_images=2), log=None)
    assert list(metadata["artifacts"]) == list(formats) and metadata["parity_passed"]
    for fmt in formats:
        for name in (metadata["artifacts"][fmt]["file"], metadata["artifacts"][fmt]["refine"]["file"]):
            model = TFLiteModel(tmp_path / "e" / name, num_threads=1)
            assert model.input["dtype"] == np.float32 and model.output["dtype"] == np.float32  # float in and out
    for name in ("model_int8_mixed.tflite", "refine/model_int8_mixed.tflite"):
        model = TFLiteModel(tmp_path / "e" / name)
        interpreter = model.interpreter
        ops = interpreter._get_ops_details()
        dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
        first = next(op for op in ops if model.input["index"] in op["inputs"])
        assert first["op_name"] == "CONV_2D" and all(dtypes[i] == np.float32 for i in first["inputs"] if i >= 0)
        last = next(op for op in ops if model.output["index"] in op["outputs"])
        assert last["op_name"] == "LOGISTIC"  # the head runs in float, after a DEQUANTIZE
        body = [op for op in ops if op["op_name"] == "CONV_2D" and op is not first]
        assert sum(dtypes[op["inputs"][0]] == np.int8 for op in body) == len(body) - 1  # all but the head: int8


def test_edge_benchmark_runs_the_chain_on_one_core(chain_exported):
    out, _ = chain_exported
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "edge.py"), "--export", str(out), "--reps", "2",
                             "--cores", "1", "--formats", "tflite_int8"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    timed = [line for line in lines if line.startswith("tflite_int8 ")]
    assert len(timed) == 2 and all("both stages" in line and "TensorFlow LOADED" not in line for line in timed)
    assert all("first_stage" in line and "refine_stage" in line and "write" in line for line in timed)
    ratios = {line.split()[1]: float(line.split()[2]) for line in lines if line.startswith("ratio ")}
    assert set(ratios) == {"budget_100ms_tflite_int8_1core_tta_off", "budget_100ms_cpu_tflite_int8_1core_tta_off",
                           "rss_budget_150mb_tflite_int8"} and all(v > 0 for v in ratios.values())
