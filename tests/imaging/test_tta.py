"""keras_unet.imaging.tta and its use in infer.predictor: shifted and zoomed views, mapped back, averaged where seen."""

import numpy as np
import pytest

from helpers import blob_scene, tiny_config
from keras_unet.config import config_from_dict
from keras_unet.errors import ConfigError
from keras_unet.imaging.tta import merge_views, view_matrices, warp
from keras_unet.infer.predictor import Predictor


def test_view_matrices_are_four_shifts_then_one_zoom_about_the_centre_per_scale():
    assert view_matrices(64) == []
    shifts = view_matrices(64, shift=0.0625)
    moves = [(m[1, 2], m[0, 2]) for m in shifts]  # (dy, dx) in pixels
    assert moves == [(0.0, -4.0), (0.0, 4.0), (-4.0, 0.0), (4.0, 0.0)]
    assert all(np.array_equal(m[:, :2], np.eye(2)) for m in shifts)
    (zoom,) = view_matrices(65, scales=[2.0])
    np.testing.assert_allclose(zoom @ [32.0, 32.0, 1.0], [32.0, 32.0])  # the centre stays put
    np.testing.assert_allclose(zoom @ [0.0, 0.0, 1.0], [-32.0, -32.0])  # the corner moves out twice as far


def test_warp_moves_a_pixel_by_a_whole_pixel_shift_and_fills_zero():
    a = np.zeros((16, 16, 6), np.float32)
    a[5, 7] = np.arange(1, 7)  # six channels: more than OpenCV warps at once
    (right, *_) = view_matrices(16, shift=0.25)[1:2]  # +4 px along x
    moved = warp(a, right)
    assert moved.shape == a.shape
    np.testing.assert_array_equal(moved[5, 11], np.arange(1, 7))
    assert moved.sum() == a.sum()
    filled = warp(np.ones((16, 16, 1), np.float32), right)
    assert filled[:, :4].max() == 0.0 and filled[:, 4:].min() == 1.0


def test_merge_views_averages_each_pixel_over_the_views_that_saw_it():
    plain = np.zeros((16, 16, 2), np.float32)
    right = view_matrices(16, shift=0.25)[1]  # the view is the input moved 4 px right
    merged = merge_views(plain, [np.ones_like(plain)], [right])
    # pixel x of the image is the view's x + 4: seen for x < 12, so (0 + 1) / 2 there; past it only the plain pass
    np.testing.assert_array_equal(merged[:, :12], 0.5)
    np.testing.assert_array_equal(merged[:, 12:], 0.0)
    zoomed_out = merge_views(plain, [np.ones_like(plain)], view_matrices(16, scales=[0.5]))
    np.testing.assert_allclose(zoomed_out, 0.5, atol=1e-6)  # a zoomed-out view sees every pixel
    zoomed_in = merge_views(plain, [np.ones_like(plain)], view_matrices(16, scales=[2.0]))[..., 0]
    assert zoomed_in[0, 0] == 0.0 and zoomed_in[7, 7] == pytest.approx(0.5)  # it sees the middle half only


class PixelNetwork:
    """A network that treats each pixel alone (0.5 x input + 0.1 + channel / 10), so shifts cannot change it."""

    def __init__(self, channels):
        self.channels, self.batches = channels, []

    def __call__(self, batch):
        self.batches.append(batch.shape[0])
        return (batch * 0.5 + 0.1 + np.arange(self.channels, dtype=np.float32) / 10).astype(np.float32)


class RowWeightNetwork(PixelNetwork):
    """Each pixel times (its row / 64) squared: a network that knows where it is, so moved views change it."""

    def __call__(self, batch):
        self.batches.append(batch.shape[0])
        weight = (np.arange(batch.shape[1], dtype=np.float32) / 64)[None, :, None, None] ** 2
        return np.repeat(batch * weight, self.channels, axis=3).astype(np.float32)


def _config(shift=0.0, scales=()):
    config = tiny_config()  # 64 px: a 64 x 64 image goes through unresized
    config.postprocess.tta_shift, config.postprocess.tta_scales = shift, list(scales)
    return config


def test_whole_pixel_shifted_views_leave_a_pixelwise_network_unchanged_and_run_in_one_batch():
    image = blob_scene(np.random.default_rng(3), 64, 64)[0]
    plain = Predictor(PixelNetwork(3), _config()).predict_probs(image, tta=True)
    predictor = Predictor(PixelNetwork(3), _config(shift=0.0625))
    np.testing.assert_allclose(predictor.predict_probs(image, tta=True), plain, atol=1e-6)  # no zero fill leaks in
    assert predictor.network.batches == [10]  # (plain + 4 shifts) x (image, mirror)
    predictor.predict_probs(image, tta=False)
    predictor.predict_passes(image)
    assert predictor.network.batches[1:] == [1, 2]  # no views without tta; the flags' passes stay plain and mirror


def test_moved_views_of_a_network_that_knows_where_it_is_average_by_hand():
    image = np.zeros((64, 64), np.uint8)
    image[20:24, 10:30] = 255
    plain_config, config = _config(), _config(shift=0.0625)
    plain_config.classes = config.classes = ["rib"]  # no left/right pair: no mirror
    plain = Predictor(RowWeightNetwork(1), plain_config).predict_probs(image, tta=False)[..., 0]
    viewed = Predictor(RowWeightNetwork(1), config).predict_probs(image, tta=True)[..., 0]
    value = plain[21, 15] / (21 / 64) ** 2  # the normalised bar
    assert value > 0.5
    # the sideways views and the plain pass see row 21 at row 21, the views moved up and down at rows 17 and 25:
    # (3 x 21^2 + 17^2 + 25^2) / 5 = 21^2 + 6.4
    assert viewed[21, 15] == pytest.approx(value * (21 ** 2 + 6.4) / 64 ** 2, rel=1e-5)
    assert viewed[21, 15] != pytest.approx(plain[21, 15], rel=1e-3)


@pytest.mark.parametrize("section, message", [({"tta_shift": 0.3}, "tta_shift"), ({"tta_scales": [1.0]}, "tta_scales"),
                                              ({"tta_scales": 1.1}, "tta_scales")])
def test_bad_view_settings_are_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"postprocess": section}, "cfg.yaml").validate()


def test_postprocess_settings_take_the_command_lines_views_and_check_them():
    from keras_unet.config import PostprocessConfig
    from keras_unet.infer.predictor import postprocess_settings, tta_views

    base = PostprocessConfig(tta_shift=0.03, tta_scales=[0.9, 1.1])
    assert tta_views(postprocess_settings(base)) == (0.03, (0.9, 1.1))  # the run's views when the flags are absent
    assert tta_views(postprocess_settings(base, tta_shift=0.0, tta_scales=[])) == (0.0, ())
    assert tta_views(postprocess_settings(PostprocessConfig(), tta_shift=0.05)) == (0.05, ())
    with pytest.raises(ConfigError, match="--tta-shift must be in"):
        postprocess_settings(base, tta_shift=0.5)
    with pytest.raises(ConfigError, match="--tta-scales must be"):
        postprocess_settings(base, tta_scales=[3.0])


def test_the_inference_options_parse_shifts_and_zoom_factors():
    import argparse

    from keras_unet.cli.common import add_inference_options

    parser = argparse.ArgumentParser()
    add_inference_options(parser)
    args = parser.parse_args(["--model", "m", "--tta-shift", "0.03", "--tta-scales", "0.9,1.1"])
    assert (args.tta_shift, args.tta_scales) == (0.03, [0.9, 1.1])
    assert parser.parse_args(["--model", "m", "--tta-scales", "none"]).tta_scales == []
    defaults = parser.parse_args(["--model", "m"])
    assert (defaults.tta_shift, defaults.tta_scales) == (None, None)  # None: the run's settings
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--tta-scales", "0.9,big"])


def test_a_refined_predictor_gives_both_stages_the_same_views():
    from keras_unet.infer.predictor import RefinedPredictor

    coarse_config = _config(shift=0.0625)
    coarse = Predictor(PatchLikeNetwork(3), coarse_config)
    fine_config = tiny_config()
    fine_config.image_size = 32
    fine_config.crops.classes, fine_config.crops.margin = ["left_clavicle"], 0.5
    fine = Predictor(PixelNetwork(1), fine_config)  # the fine stage's own config has no views: the run's count
    image = blob_scene(np.random.default_rng(4), 64, 64)[0]
    RefinedPredictor(coarse, fine).predict_probs(image, tta=True)
    assert coarse.network.batches == [10] and fine.network.batches == [10]  # (plain + 4 shifts) x (image, mirror)
    RefinedPredictor(coarse, fine).predict_probs(image, tta=True, views=(0.0, (1.1,)))
    assert coarse.network.batches[1:] == [4] and fine.network.batches[1:] == [4]  # (plain + 1 zoom) x 2


class PatchLikeNetwork(PixelNetwork):
    """Every channel 0.9 on rows 10-19, columns 30-49 of its input and 0.05 elsewhere: one structure to crop."""

    def __call__(self, batch):
        self.batches.append(batch.shape[0])
        out = np.full((*batch.shape[:3], self.channels), 0.05, np.float32)
        out[:, 10:20, 30:50] = 0.9
        return out
