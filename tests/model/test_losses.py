"""Losses and metrics against values worked out by hand, empty masks included."""

import numpy as np
import pytest
import keras

from keras_unet.model.losses import (BceDiceLoss, DiceLoss, DiceScore, FocalTverskyLoss, IoUScore, get_loss,
                                     segmentation_metrics)


def batch(*planes):
    """(1, H, W, C) float32 from 2-D planes, one per class."""
    return np.stack(planes, axis=-1)[None].astype("float32")


TRUTH = np.array([[1, 1], [0, 0]], dtype="float32")
PRED = np.array([[1, 0], [1, 0]], dtype="float32")
EMPTY = np.zeros((2, 2), dtype="float32")


def test_dice_loss_by_hand():
    # intersection 1, |t| 2, |p| 2: dice = (2*1 + 1) / (4 + 1) = 0.6 -> loss 0.4
    loss = DiceLoss()(batch(TRUTH), batch(PRED))
    assert float(loss) == pytest.approx(0.4, abs=1e-6)


def test_dice_loss_empty_truth_and_prediction_is_zero():
    assert float(DiceLoss()(batch(EMPTY), batch(EMPTY))) == pytest.approx(0.0, abs=1e-7)


def test_dice_loss_empty_truth_full_prediction():
    # intersection 0, total 4: (0 + 1) / (4 + 1) = 0.2 -> loss 0.8
    assert float(DiceLoss()(batch(EMPTY), batch(np.ones((2, 2))))) == pytest.approx(0.8, abs=1e-6)


def test_dice_loss_averages_classes():
    # class 0: 0.4 (above); class 1 perfect: (2*2+1)/(4+1) = 1 -> 0.0; mean 0.2
    loss = DiceLoss()(batch(TRUTH, TRUTH), batch(PRED, TRUTH))
    assert float(loss) == pytest.approx(0.2, abs=1e-6)


def test_bce_dice_by_hand():
    p = np.array([[0.9, 0.2], [0.3, 0.1]], dtype="float32")
    bce = -np.mean(TRUTH * np.log(p) + (1 - TRUTH) * np.log(1 - p))
    dice = (2 * (0.9 + 0.2) + 1) / (2 + p.sum() + 1)
    loss = BceDiceLoss()(batch(TRUTH), batch(p))
    assert float(loss) == pytest.approx(bce + 1 - dice, abs=1e-5)


def test_focal_tversky_by_hand():
    # tp 1, fn 1, fp 1: TI = (1 + 1) / (1 + 0.7 + 0.3 + 1) = 2/3; loss = (1/3) ** 0.75
    loss = FocalTverskyLoss()(batch(TRUTH), batch(PRED))
    assert float(loss) == pytest.approx((1 / 3) ** 0.75, abs=1e-6)


def test_focal_tversky_weighs_false_negatives_more():
    missed = FocalTverskyLoss()(batch(TRUTH), batch(np.array([[1, 0], [0, 0]])))  # one fn
    extra = FocalTverskyLoss()(batch(TRUTH), batch(np.array([[1, 1], [1, 0]])))  # one fp
    assert float(missed) > float(extra)


def test_dice_and_iou_scores_by_hand():
    dice, iou = DiceScore(2), IoUScore(2)
    t, p = batch(TRUTH, EMPTY), batch(PRED, EMPTY)
    dice.update_state(t, p)
    iou.update_state(t, p)
    # class 0: tp 1 fp 1 fn 1 -> dice 2/4, iou 1/3; class 1 empty both -> 1
    assert float(dice.result()) == pytest.approx((0.5 + 1.0) / 2)
    assert float(iou.result()) == pytest.approx((1 / 3 + 1.0) / 2)


def test_score_per_class_and_threshold():
    probs = np.array([[0.6, 0.4], [0.0, 0.0]], dtype="float32")
    m = DiceScore(1, class_index=0, threshold=0.5)
    m.update_state(batch(TRUTH), batch(probs))
    assert float(m.result()) == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    m2 = DiceScore(1, class_index=0, threshold=0.3)
    m2.update_state(batch(TRUTH), batch(probs))
    assert float(m2.result()) == pytest.approx(1.0)


def test_score_accumulates_over_batches_and_resets():
    m = DiceScore(1)
    m.update_state(batch(TRUTH), batch(TRUTH))
    m.update_state(batch(TRUTH), batch(EMPTY))
    # tp 2, fn 2: 4 / (4 + 2) = 2/3
    assert float(m.result()) == pytest.approx(2 / 3)
    m.reset_state()
    m.update_state(batch(TRUTH), batch(TRUTH))
    assert float(m.result()) == pytest.approx(1.0)


def test_prediction_on_empty_truth_scores_zero():
    m = DiceScore(1)
    m.update_state(batch(EMPTY), batch(TRUTH))
    assert float(m.result()) == pytest.approx(0.0)


@pytest.mark.parametrize("cls", [DiceLoss, BceDiceLoss, FocalTverskyLoss])
def test_losses_round_trip_through_config(cls):
    loss = cls()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss), safe_mode=True)
    assert type(clone) is cls and clone.get_config() == loss.get_config()


def test_metrics_named_per_class():
    names = [m.name for m in segmentation_metrics(["left_clavicle", "right_clavicle"])]
    assert names == ["dice", "iou", "dice_left_clavicle", "dice_right_clavicle"]


def test_get_loss_rejects_unknown():
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge")
