"""keras_unet.imaging.shape_prior: a mask's shape features by hand, the prior over training masks, the deviation."""

import math

import numpy as np
import pytest

from keras_unet.imaging.shape_prior import deviation, expected, fit_prior, mask_features


def bar(top=10, left=20, height=4, width=40, size=(50, 100)) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[top:top + height, left:left + width] = 1
    return m


def test_features_of_a_bar_by_hand():
    f = mask_features(bar())  # rows 10-13, columns 20-59 of a 50 x 100 image
    assert f["area"] == pytest.approx(160 / 5000)
    assert f["parts"] == 1
    assert f["cx"] == pytest.approx(40 / 100) and f["cy"] == pytest.approx(12 / 50)  # pixel centres 39.5 + 0.5
    # minAreaRect of the pixel centres: 39 x 3 (centre to centre); thickness = 160 px / 39 / 100
    assert f["length"] == pytest.approx(39 / 100)
    assert f["thickness"] == pytest.approx(160 / 39 / 100)
    two = bar() | bar(top=30, left=10, height=2, width=5)
    assert mask_features(two)["parts"] == 2 and mask_features(two)["length"] == pytest.approx(0.39)
    assert mask_features(np.zeros((5, 5))) is None
    with pytest.raises(ValueError):
        mask_features(np.zeros((2, 2, 2)))


def test_prior_range_and_deviation_in_spreads():
    prior = fit_prior({"bar": [bar(top=t) for t in (10, 12, 14)] + [np.zeros((50, 100))]})
    entry = prior["classes"]["bar"]
    assert (entry["images"], entry["present"]) == (4, 3)
    cy = entry["features"]["cy"]
    assert (cy["min"], cy["max"], cy["mean"]) == pytest.approx((12 / 50, 16 / 50, 14 / 50))
    assert cy["std"] == pytest.approx(np.std([12, 14, 16]) / 50)
    assert deviation(mask_features(bar(top=13)), entry) == (0.0, "")  # inside every range
    # 10 rows lower than the lowest training bar: (26 - 16) / 50 beyond, over the spread std = 1.633 / 50
    value, feature = deviation(mask_features(bar(top=24)), entry)
    assert feature == "cy" and value == pytest.approx(10 / np.std([12, 14, 16]))
    # parts never varied (std 0): its spread is 10% of its mean, so one part more is 10 spreads out
    value, feature = deviation(mask_features(bar(top=12) | bar(top=40, width=3)), entry)
    assert feature == "parts" and value == pytest.approx(10.0)


def test_an_empty_mask_deviates_only_when_the_class_is_expected():
    always = fit_prior({"c": [bar()] * 20})["classes"]["c"]
    rarely = fit_prior({"c": [bar()] + [np.zeros((50, 100))] * 3})["classes"]["c"]
    assert expected(always) and not expected(rarely)
    assert deviation(None, always) == (math.inf, "missing")
    assert deviation(None, rarely) == (0.0, "")
    never = fit_prior({"c": [np.zeros((5, 5))]})["classes"]["c"]
    assert "features" not in never and deviation(mask_features(bar()), never) == (0.0, "")


def test_the_uncertainty_limit_is_the_validation_mean_plus_three_spreads():
    from keras_unet.imaging.shape_prior import fit_uncertainty, uncertainty_limit

    figures = fit_uncertainty({"thin": [0.2, 0.3, 0.4], "blob": [0.5, 0.5], "none": []})
    assert set(figures) == {"thin", "blob"} and figures["thin"]["images"] == 3
    assert uncertainty_limit({"uncertainty": figures["thin"]}, 0.35) == pytest.approx(0.3 + 3 * np.std([0.2, 0.3, 0.4]))
    assert uncertainty_limit({"uncertainty": figures["blob"]}, 0.35) == pytest.approx(0.5 + 3 * 0.05)  # spread floor
    assert uncertainty_limit({}, 0.35) == uncertainty_limit(None, 0.35) == 0.35
