"""keras_unet.infer.load: original-size outputs, run settings, one-line load errors, and the Keras, SavedModel,
TFLite and ONNX backends giving the same probabilities."""

import json

import numpy as np
import pytest

from helpers import CLASSES, SIZE, blob_run, blob_scene, tiny_config, tiny_run  # noqa: F401 (fixtures)
from keras_unet.config import PostprocessConfig
from keras_unet.errors import ConfigError, DataError
from keras_unet.imaging.preprocess import prepare, unletterbox
from keras_unet.infer.load import load_predictor
from keras_unet.io.files import write_json_atomic


def _image(height=40, width=70, seed=1):
    return blob_scene(np.random.default_rng(seed), height, width)[0]


@pytest.mark.parametrize("shape", [(50, 90), (90, 37), (64, 64), (7, 300)])
def test_probabilities_come_back_at_the_original_size(tiny_run, shape):  # noqa: F811
    predictor = load_predictor(tiny_run / "model.keras")
    probs = predictor.predict_probs(_image(*shape), tta=True)
    assert probs.shape == (*shape, len(CLASSES)) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0


def test_segment_uses_the_run_settings_unless_overridden(blob_run):  # noqa: F811
    predictor = load_predictor(blob_run)  # a run folder works as well as its model.keras
    assert predictor.classes == CLASSES and predictor.config.image_size == SIZE
    image, truth = blob_scene(np.random.default_rng(3), 60, 100)
    probs, masks = predictor.segment(image)
    assert masks.dtype == np.uint8 and masks.shape == truth.shape and set(np.unique(masks)) <= {0, 1}
    assert 2 * (masks[..., 0] & truth[..., 0]).sum() / (masks[..., 0].sum() + truth[..., 0].sum()) > 0.8
    _, none = predictor.segment(image, PostprocessConfig(threshold=0.999999, tta=False))
    assert none.sum() < masks.sum()


def test_load_errors_are_one_line(tmp_path, tiny_run):  # noqa: F811
    with pytest.raises(DataError, match="model not found"):
        load_predictor(tmp_path / "nothing.keras")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(DataError, match="not a model"):
        load_predictor(tmp_path / "weights.h5")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.keras").write_bytes((tiny_run / "model.keras").read_bytes())
    with pytest.raises(ConfigError, match="no run settings"):
        load_predictor(lonely / "model.keras")
    (lonely / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no classes"):
        load_predictor(lonely / "model.keras")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"not a zip file")
    (broken / "config.json").write_text((tiny_run / "config.json").read_text())
    with pytest.raises(DataError, match="cannot load the Keras model"):
        load_predictor(broken / "model.keras")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run):  # noqa: F811
    """An export folder of the tiny run: saved_model/ and metadata.json, as export.exporter lays them out."""
    import keras

    from keras_unet.export.convert import write_saved_model

    folder = tmp_path_factory.mktemp("export")
    model = keras.saving.load_model(tiny_run / "model.keras", compile=False)
    write_saved_model(model, folder / "saved_model", SIZE)
    config = json.loads((tiny_run / "config.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({"config": config, "format": "test"}))
    return folder, model


def _same_as_keras(path, run):
    image = _image(45, 80)
    expected = load_predictor(run / "model.keras").predict_probs(image, tta=True)
    np.testing.assert_allclose(load_predictor(path).predict_probs(image, tta=True), expected, atol=1e-4)


def test_saved_model_matches_keras(exported, tiny_run):  # noqa: F811
    _same_as_keras(exported[0] / "saved_model", tiny_run)


def test_tflite_matches_keras(exported, tiny_run):  # noqa: F811
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export.convert import convert_tflite

    folder = exported[0]
    (folder / "model.tflite").write_bytes(convert_tflite(folder / "saved_model", "tflite"))
    _same_as_keras(folder / "model.tflite", tiny_run)


def test_onnx_matches_keras(exported, tiny_run):  # noqa: F811
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from keras_unet.export.convert import convert_onnx

    folder, model = exported
    (folder / "model.onnx").write_bytes(convert_onnx(model, SIZE).SerializeToString())
    _same_as_keras(folder / "model.onnx", tiny_run)


def test_mixed_precision_model_runs_in_float32_on_cpu(tmp_path):
    import keras

    from keras_unet.model.unet import build_unet

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet(len(CLASSES), depth=2, base_filters=4)
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(tmp_path / "model.keras")
    write_json_atomic(tmp_path / "config.json", tiny_config().to_dict())
    image = _image(40, 40)
    probs = load_predictor(tmp_path / "model.keras").predict_probs(image, tta=False)
    x, box = prepare(image, tiny_config())
    expected = unletterbox(np.asarray(model(x[None], training=False), np.float32)[0], box)
    np.testing.assert_allclose(probs, expected, atol=2e-2)




# -- a two-stage export's metadata (no conversion: the metadata is written here as the exporter writes it) --------


def _chain_metadata(tmp_path, entry=None):
    from keras_unet.export.chain import describe

    config = tiny_config()
    config.refine.enabled, config.refine.image_size, config.refine.blend = True, 32, 0.25
    config.postprocess.tta_shift, config.postprocess.tta_scales = 0.03, [0.9, 1.1]
    config.out = str(tmp_path / "run")
    fine = config.refine_stage()
    values = {"format_version": 2, "config": config.to_dict(), "refine": describe(config, fine, 3),
              "artifacts": {"tflite": entry or {"file": "model.tflite", "refine": {"file": "refine/model.tflite"}}}}
    write_json_atomic(tmp_path / "metadata.json", values)
    return config, fine


def test_chain_metadata_round_trip(tmp_path):
    from keras_unet.infer.load import read_metadata, refine_config

    config, fine = _chain_metadata(tmp_path)
    values, read = read_metadata(tmp_path / "model.tflite")  # the model file's name finds the metadata beside it
    assert read == config.validate() and refine_config(values, tmp_path) == fine.validate()
    section = values["refine"]
    assert section["crop"]["margin"] == fine.crops.margin == config.refine.margin
    assert section["blend"] == 0.25 and section["image_size"] == 32 and section["classes"] == CLASSES
    assert section["output"] == ["structure"] and section["tta"] == config.postprocess.tta
    assert read.postprocess.tta_shift == 0.03  # the views travel in the config too, so a loaded export runs them
    assert (section["tta_views"]["shift"], section["tta_views"]["scales"]) == (0.03, [0.9, 1.1])
    assert refine_config({"config": {}}, tmp_path) is None  # a single-stage (0.1.0) export
    with pytest.raises(ConfigError, match="refine.*no \"config\" mapping"):
        refine_config({"refine": {"folder": "refine"}}, tmp_path / "metadata.json")


def test_chain_export_without_the_refine_model_is_one_line_error(tmp_path):
    from keras_unet.infer.load import load_exported

    _chain_metadata(tmp_path)
    (tmp_path / "model.tflite").write_bytes(b"not loaded: the refine check comes first")
    with pytest.raises(ConfigError, match=r"names no refine-stage model for model.tflite \(the file "
                                          r"refine/model.tflite is missing\); export again"):
        load_exported(tmp_path / "model.tflite")
    _chain_metadata(tmp_path, entry={"file": "model.tflite"})
    with pytest.raises(ConfigError, match="names no refine-stage model for model.tflite; export again"):
        load_exported(tmp_path / "model.tflite")


def test_export_folder_runs_its_preferred_artefact_that_passed(tmp_path):
    from keras_unet.infer.load import preferred_artifact

    pytest.importorskip("ai_edge_litert")
    artifacts = {"tflite_int8": {"file": "model_int8.tflite", "parity_passed": True},
                 "tflite": {"file": "model.tflite", "parity_passed": False}}
    write_json_atomic(tmp_path / "metadata.json", {"config": tiny_config().to_dict(), "artifacts": artifacts})
    for name in ("model.tflite", "model_int8.tflite"):
        (tmp_path / name).write_bytes(b"x")
    assert preferred_artifact(tmp_path) == tmp_path / "model_int8.tflite"  # float32 failed its gate: passed over
    artifacts["tflite_int8"]["parity_passed"] = False
    write_json_atomic(tmp_path / "metadata.json", {"config": tiny_config().to_dict(), "artifacts": artifacts})
    with pytest.raises(DataError, match="no artefact that passed its parity gate"):
        load_predictor(tmp_path)
