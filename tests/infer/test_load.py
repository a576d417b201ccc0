"""keras_unet.inference: test-time flipping, original-size outputs, and the Keras, SavedModel, TFLite, ONNX backends."""

import json

import numpy as np
import pytest

from helpers import CLASSES, SIZE, blob_run, blob_scene, tiny_config, tiny_run  # noqa: F401 (fixtures)
from keras_unet.config import PostprocessConfig
from keras_unet.errors import ConfigError, DataError
from keras_unet.inference import Predictor, load_predictor, postprocess_settings


class StubNetwork:
    """A network that is not mirror-symmetric: channel c is the input times a left-to-right ramp, plus c/10."""

    def __init__(self, channels):
        self.channels, self.batches = channels, []

    def __call__(self, batch):
        self.batches.append(batch.shape[0])
        ramp = np.linspace(0.0, 1.0, batch.shape[2], dtype=np.float32)[None, None, :, None]
        offsets = np.arange(self.channels, dtype=np.float32) / 10
        return (batch * ramp * 0.5 + offsets).astype(np.float32)


def _image(height=40, width=70, seed=1):
    return blob_scene(np.random.default_rng(seed), height, width)[0]


def test_tta_is_the_mean_of_the_pass_and_the_flipped_back_mirrored_pass():
    predictor = Predictor(StubNetwork(3), tiny_config())
    image = _image()
    plain = predictor.predict_probs(image, tta=False)
    mirrored = predictor.predict_probs(image[:, ::-1], tta=False)[:, ::-1][..., [1, 0, 2]]
    tta = predictor.predict_probs(image, tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(tta, plain, atol=1e-3)  # the stub is asymmetric, so flipping matters
    assert predictor.network.batches[-1] == 2  # both views go through the network in one batch


def test_tta_is_skipped_without_a_full_left_right_pair():
    config = tiny_config()
    config.classes = ["left_clavicle", "rib"]
    predictor = Predictor(StubNetwork(2), config)
    image = _image()
    np.testing.assert_array_equal(predictor.predict_probs(image, tta=True), predictor.predict_probs(image, tta=False))
    assert predictor.network.batches == [1, 1]


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


def test_postprocess_settings_switches():
    base = PostprocessConfig(thresholds={"rib": 0.3})
    changed = postprocess_settings(base, enabled=False, tta=False, threshold=0.7)
    assert (changed.enabled, changed.tta, changed.threshold, changed.thresholds) == (False, False, 0.7, {})
    assert postprocess_settings(base).thresholds == {"rib": 0.3}
    with pytest.raises(ConfigError):
        postprocess_settings(base, threshold=1.5)


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
    """An export folder of the tiny run: saved_model/ and metadata.json (as keras_unet.export lays them out)."""
    import keras

    from keras_unet.export import write_saved_model

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
    pytest.importorskip("keras_unet.edge")
    pytest.importorskip("ai_edge_litert")
    from keras_unet.export import convert_tflite

    folder = exported[0]
    (folder / "model.tflite").write_bytes(convert_tflite(folder / "saved_model", "tflite"))
    _same_as_keras(folder / "model.tflite", tiny_run)


def test_onnx_matches_keras(exported, tiny_run):  # noqa: F811
    pytest.importorskip("keras_unet.onnx_model")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from keras_unet.export import convert_onnx

    folder, model = exported
    (folder / "model.onnx").write_bytes(convert_onnx(model, SIZE).SerializeToString())
    _same_as_keras(folder / "model.onnx", tiny_run)


def test_mixed_precision_model_runs_in_float32_on_cpu(tmp_path):
    import keras

    from keras_unet.model import build_unet

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet(len(CLASSES), depth=2, base_filters=4)
    finally:
        keras.config.set_dtype_policy("float32")
    model.save(tmp_path / "model.keras")
    tiny_config().save(tmp_path / "config.json")
    image = _image(40, 40)
    probs = load_predictor(tmp_path / "model.keras").predict_probs(image, tta=False)
    from keras_unet.preprocess import prepare, unletterbox

    x, box = prepare(image, tiny_config())
    expected = unletterbox(np.asarray(model(x[None], training=False), np.float32)[0], box)
    np.testing.assert_allclose(probs, expected, atol=2e-2)


class PatchNetwork:
    """A network whose every channel is `inside` on the rectangle rows x cols of its input and `outside` elsewhere."""

    def __init__(self, channels, rows=slice(0, 0), cols=slice(0, 0), inside=0.9, outside=0.05):
        self.channels, self.rows, self.cols, self.inside, self.outside = channels, rows, cols, inside, outside
        self.inputs = []

    def __call__(self, batch):
        self.inputs.append(batch.copy())
        out = np.full((*batch.shape[:3], self.channels), self.outside, np.float32)
        out[:, self.rows, self.cols] = self.inside
        return out


def _refine_pair(fine_value: float, blend: float = 1.0):
    """A coarse stub finding left_clavicle on rows 10-19, columns 30-49 (0.9, else 0.05) of a 64 px input, and a
    32 px refine stub answering fine_value everywhere, with margin 0.5."""
    coarse_config = tiny_config()  # 64 px, so a 64 x 64 image passes unresized
    coarse_config.refine.blend = blend
    coarse = Predictor(PatchNetwork(3, slice(10, 20), slice(30, 50)), coarse_config)
    fine_config = tiny_config()
    fine_config.image_size = 32
    fine_config.crops.classes, fine_config.crops.margin = ["left_clavicle"], 0.5
    return coarse, Predictor(PatchNetwork(1, inside=fine_value, outside=fine_value), fine_config)


def test_refined_predictor_replaces_each_structure_inside_its_crop():
    from keras_unet import crops
    from keras_unet.preprocess import normalize, prepare
    from keras_unet.segmenter import RefinedPredictor

    coarse, fine = _refine_pair(0.7)
    fine_config = fine.config
    image = _image(64, 64)
    probs = RefinedPredictor(coarse, fine).predict_probs(image, tta=False)
    # the coarse left_clavicle covers rows 10-19, columns 30-49: side ceil(20 x 2) = 40 at (-5, 20)
    expected = coarse.predict_probs(image, tta=False)
    expected[0:35, 20:60, 0] = 0.7
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    crop_input, _ = prepare(crops.crop(normalize(image, fine_config.normalization), (-5, 20, 40)), fine_config,
                            normalized=True)
    np.testing.assert_allclose(fine.network.inputs[0][0], crop_input, atol=1e-6)


def test_refined_predictor_blends_with_the_first_model_inside_the_crop():
    from keras_unet.segmenter import RefinedPredictor

    coarse, fine = _refine_pair(0.5, blend=0.25)
    image = _image(64, 64)
    probs = RefinedPredictor(coarse, fine).predict_probs(image, tta=False)
    expected = coarse.predict_probs(image, tta=False)
    expected[0:35, 20:60, 0] = 0.25 * 0.5 + 0.75 * 0.05  # crop (-5, 20, 40), outside the coarse rectangle
    expected[10:20, 30:50, 0] = 0.25 * 0.5 + 0.75 * 0.9  # inside it
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_refined_predictor_leaves_an_image_without_the_structure_alone():
    from keras_unet.segmenter import RefinedPredictor

    coarse = Predictor(PatchNetwork(3), tiny_config())  # finds nothing
    fine_config = tiny_config()
    fine_config.crops.classes = ["left_clavicle"]
    fine = Predictor(PatchNetwork(1, inside=0.7, outside=0.7), fine_config)
    image = _image(64, 64)
    np.testing.assert_array_equal(RefinedPredictor(coarse, fine).predict_probs(image, tta=False),
                                  coarse.predict_probs(image, tta=False))
    assert fine.network.inputs == []
    fine_config.crops.classes = []
    with pytest.raises(Exception, match="crop classes"):
        RefinedPredictor(coarse, fine)
