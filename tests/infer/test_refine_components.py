"""The refine stage on a class of several parts (ribs): one crop per component, pasted back with the mean or max
where crops overlap; a class of one part keeps its single crop around the largest component."""

import numpy as np

from helpers import blob_scene, tiny_config
from keras_unet.infer.predictor import Predictor, RefinedPredictor


class TwoPartNetwork:
    """Every channel 0.9 on two rectangles of a 64 px input (rows 10-19, columns 4-13 and 20-29), 0.05 elsewhere."""

    def __call__(self, batch):
        out = np.full((*batch.shape[:3], 3), 0.05, np.float32)
        out[:, 10:20, 4:14] = out[:, 10:20, 20:30] = 0.9
        return out


class CountingNetwork:
    """A refine stub answering 0.2 everywhere on its first crop, 0.6 on its second, and so on."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        return np.full((*batch.shape[:3], 1), 0.2 + 0.4 * (self.calls - 1), np.float32)


def _pair(components: list, overlap: str = "mean", min_area: int = 0):
    coarse_config = tiny_config()
    coarse_config.postprocess.min_areas = {"rib": min_area} if min_area else {}
    fine_config = tiny_config()
    fine_config.image_size = 32
    fine_config.crops.classes, fine_config.crops.margin = ["rib"], 0.5
    fine_config.crops.components, fine_config.crops.overlap = components, overlap
    return Predictor(TwoPartNetwork(), coarse_config), Predictor(CountingNetwork(), fine_config)


def _image():
    return blob_scene(np.random.default_rng(3), 64, 64)[0]


def test_each_component_gets_its_crop_and_overlaps_take_the_mean():
    coarse, fine = _pair(["rib"])
    probs = RefinedPredictor(coarse, fine).predict_probs(_image(), tta=False)
    # components of 10 x 10 px, margin 0.5: squares of side 20 at (5, -1) [first, 0.2] and (5, 15) [second, 0.6]
    expected = coarse.predict_probs(_image(), tta=False)[..., 2].copy()
    expected[5:25, 0:19] = 0.2
    expected[5:25, 19:35] = 0.6
    expected[5:25, 15:19] = 0.4  # both crops: their mean
    np.testing.assert_allclose(probs[..., 2], expected, atol=1e-6)
    assert fine.network.calls == 2


def test_overlap_max_and_the_minimum_area():
    coarse, fine = _pair(["rib"], overlap="max")
    probs = RefinedPredictor(coarse, fine).predict_probs(_image(), tta=False)
    np.testing.assert_allclose(probs[5:25, 15:19, 2], 0.6, atol=1e-6)
    coarse, fine = _pair(["rib"], min_area=101)  # both parts have 100 px: no crop, the first model's as it was
    image = _image()
    np.testing.assert_array_equal(RefinedPredictor(coarse, fine).predict_probs(image, tta=False),
                                  coarse.predict_probs(image, tta=False))
    assert fine.network.calls == 0


def test_a_class_not_in_components_gets_one_crop_around_its_largest_part():
    coarse, fine = _pair([])
    probs = RefinedPredictor(coarse, fine).predict_probs(_image(), tta=False)
    assert fine.network.calls == 1  # ties: the first component in raster order, (5, -1, 20)
    np.testing.assert_allclose(probs[5:25, 0:19, 2], 0.2, atol=1e-6)
    np.testing.assert_allclose(probs[10:20, 20:30, 2], 0.9, atol=1e-6)  # the other part: the first model's
