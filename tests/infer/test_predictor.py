"""keras_unet.infer.predictor: test-time flipping, post-processing switches and the refine stage, on stub networks."""

import numpy as np
import pytest

from helpers import blob_scene, tiny_config
from keras_unet.config import PostprocessConfig
from keras_unet.errors import ConfigError
from keras_unet.imaging import crops
from keras_unet.imaging.preprocess import normalize, prepare
from keras_unet.infer.predictor import Predictor, RefinedPredictor, postprocess_settings


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


def test_postprocess_settings_switches():
    base = PostprocessConfig(thresholds={"rib": 0.3})
    changed = postprocess_settings(base, enabled=False, tta=False, threshold=0.7)
    assert (changed.enabled, changed.tta, changed.threshold, changed.thresholds) == (False, False, 0.7, {})
    assert postprocess_settings(base).thresholds == {"rib": 0.3}
    with pytest.raises(ConfigError):
        postprocess_settings(base, threshold=1.5)


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
    coarse, fine = _refine_pair(0.5, blend=0.25)
    image = _image(64, 64)
    probs = RefinedPredictor(coarse, fine).predict_probs(image, tta=False)
    expected = coarse.predict_probs(image, tta=False)
    expected[0:35, 20:60, 0] = 0.25 * 0.5 + 0.75 * 0.05  # crop (-5, 20, 40), outside the coarse rectangle
    expected[10:20, 30:50, 0] = 0.25 * 0.5 + 0.75 * 0.9  # inside it
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_refined_predictor_leaves_an_image_without_the_structure_alone():
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


def test_an_onnx_session_leaves_the_process_floating_point_state_alone():
    """Subnormal float32 numbers survive loading and running an ONNX model (no flush-to-zero for the caller)."""
    pytest.importorskip("onnxruntime")
    from conftest import REPO
    from keras_unet.infer.runtimes import OnnxModel

    model = OnnxModel(REPO / "tests" / "fixtures" / "v0_1" / "export" / "model.onnx", num_threads=1)
    model.predict(np.zeros((1, 64, 64, 1), np.float32))
    tiny = np.array([1e-40], np.float32)
    assert (tiny * np.float32(1.0))[0] != 0.0
