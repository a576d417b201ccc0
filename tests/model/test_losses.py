"""Losses and metrics against values worked out by hand, empty masks and batches of differing images included.

A loss returns one value per image and Keras averages those over the batch; a metric pools its pixel counts over
every image it has seen. The batch cases below use images whose foregrounds differ in size, so each number tells
the per-image average apart from pooling over the batch.
"""

import numpy as np
import pytest
import keras

from keras_unet.model.losses import (BceDiceLoss, BceLoss, DiceLoss, DiceScore, FocalTverskyLoss, IoUScore,
                                     ReconstructionLoss, blanked_mae, get_loss, segmentation_metrics)


def batch(*planes):
    """(1, H, W, C) float32 from 2-D planes, one per class."""
    return np.stack(planes, axis=-1)[None].astype("float32")


def images(*planes_per_image):
    """(N, H, W, C) float32: one tuple of 2-D planes (one per class) per image."""
    return np.stack([np.stack(planes, axis=-1) for planes in planes_per_image]).astype("float32")


def per_image(loss, y_true, y_pred):
    """The loss's value for each image of the batch, before Keras averages them."""
    return np.asarray(loss.call(y_true, y_pred))


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


# -- batches of two images that differ ------------------------------------------------------------------------
# image 0: TRUTH / PRED above (2 foreground pixels, tp 1, fp 1, fn 1)
# image 1: all 4 pixels foreground, FULL_MISS_ONE predicts 3 of them (tp 3, fp 0, fn 1)
FULL = np.ones((2, 2), dtype="float32")
FULL_MISS_ONE = np.array([[1, 1], [1, 0]], dtype="float32")


def test_dice_loss_batch_is_the_mean_of_per_image_losses():
    t, p = images((TRUTH,), (FULL,)), images((PRED,), (FULL_MISS_ONE,))
    # image 0: 0.4 (above); image 1: intersection 3, |t| 4, |p| 3: 1 - (6 + 1) / (7 + 1) = 0.125
    np.testing.assert_allclose(per_image(DiceLoss(), t, p), [0.4, 0.125], atol=1e-6)
    # Keras averages the images: 0.2625 (pooling the batch would give 1 - (2*4 + 1) / (11 + 1) = 0.25)
    assert float(DiceLoss()(t, p)) == pytest.approx(0.2625, abs=1e-6)


def test_dice_loss_batch_with_an_empty_image():
    t, p = images((EMPTY,), (TRUTH,)), images((EMPTY,), (PRED,))
    # the empty image scores a perfect 0, the other 0.4: mean 0.2 (pooled: intersection 1, total 4 -> 0.4)
    assert float(DiceLoss()(t, p)) == pytest.approx(0.2, abs=1e-6)


P0 = np.array([[0.9, 0.2], [0.3, 0.1]], dtype="float32")  # against TRUTH
P1 = np.array([[0.8, 0.5], [1.0, 0.0]], dtype="float32")  # against FULL: 1.0 exact, 0.0 wholly wrong


def bce_numpy(y, p, epsilon=1e-7):
    """Binary cross-entropy per image, mean over pixels and classes, p clipped to [eps, 1 - eps] as Keras does."""
    p = np.clip(p.astype(np.float64), epsilon, 1 - epsilon)
    return np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)), axis=(1, 2, 3))


def test_bce_loss_per_image_by_hand_with_keras_clipping():
    t, p = images((TRUTH,), (FULL,)), images((P0,), (P1,))
    # image 0: -(ln 0.9 + ln 0.2 + ln 0.7 + ln 0.9) / 4 = (0.105361 + 1.609438 + 0.356675 + 0.105361) / 4 = 0.544208
    # image 1: -(ln 0.8 + ln 0.5 + ln(1 - 1e-7) + ln 1e-7) / 4 = (0.223144 + 0.693147 + 0 + 16.118096) / 4 = 4.258597
    #          (p = 0 on a foreground pixel costs -ln 1e-7, Keras's epsilon, not infinity)
    expected = [0.5442085, 4.2585966]
    np.testing.assert_allclose(bce_numpy(t, p), expected, rtol=1e-6)  # the hand numbers, checked once in numpy
    np.testing.assert_allclose(per_image(BceLoss(), t, p), expected, rtol=1e-5)
    assert float(BceLoss()(t, p)) == pytest.approx((0.5442085 + 4.2585966) / 2, rel=1e-5)


def test_bce_loss_averages_classes_per_image():
    t, p = images((TRUTH, FULL), (FULL, TRUTH)), images((P0, P1), (P1, P0))
    # each image holds both hand cases above, one per class: (0.544208 + 4.258597) / 2 each
    np.testing.assert_allclose(per_image(BceLoss(), t, p), [2.4014026] * 2, rtol=1e-5)


def test_bce_dice_batch_by_hand():
    t, p = images((TRUTH,), (FULL,)), images((P0,), (P1,))
    # image 0: BCE 0.544208; Dice (2 * 1.1 + 1) / (2 + 1.5 + 1) = 3.2 / 4.5 -> 1 - 0.711111 = 0.288889; sum 0.833097
    # image 1: BCE 4.258597; Dice (2 * 2.3 + 1) / (4 + 2.3 + 1) = 5.6 / 7.3 -> 1 - 0.767123 = 0.232877; sum 4.491474
    np.testing.assert_allclose(per_image(BceDiceLoss(), t, p), [0.833097, 4.491474], atol=2e-5)
    # mean 2.662286; a Dice pooled over the batch would give 1 - 7.8 / 10.8 = 0.277778 and 2.679181 in all
    assert float(BceDiceLoss()(t, p)) == pytest.approx(2.662286, abs=2e-5)


def test_bce_dice_weights():
    t, p = images((TRUTH,), (FULL,)), images((P0,), (P1,))
    # 2 * BCE + 0.5 * Dice loss, per image: 2 * 0.544208 + 0.5 * 0.288889, 2 * 4.258597 + 0.5 * 0.232877
    loss = BceDiceLoss(bce_weight=2.0, dice_weight=0.5)
    np.testing.assert_allclose(per_image(loss, t, p), [1.232861, 8.633632], atol=4e-5)


def test_focal_tversky_batch_by_hand():
    t, p = images((TRUTH,), (FULL,)), images((PRED,), (FULL_MISS_ONE,))
    # image 0: TI 2/3 -> (1/3) ** 0.75 = 0.438691
    # image 1: tp 3, fn 1, fp 0: TI = (3 + 1) / (3 + 0.7 + 0 + 1) = 4 / 4.7 -> (0.7 / 4.7) ** 0.75 = 0.239745
    np.testing.assert_allclose(per_image(FocalTverskyLoss(), t, p), [0.438691, 0.239745], atol=1e-6)
    # mean 0.339218 (pooled: TI = 5 / 6.7 -> (1.7 / 6.7) ** 0.75 = 0.357...)
    assert float(FocalTverskyLoss()(t, p)) == pytest.approx(0.339218, abs=1e-6)


def test_scores_pool_the_batch_rather_than_average_images():
    dice, iou = DiceScore(1), IoUScore(1)
    t, p = images((TRUTH,), (FULL,)), images((PRED,), (FULL_MISS_ONE,))
    dice.update_state(t, p)
    iou.update_state(t, p)
    # counts pooled over both images: tp 1 + 3, fp 1 + 0, fn 1 + 1 -> Dice 8 / 11, IoU 4 / 7
    # (a mean of per-image scores would be Dice (1/2 + 6/7) / 2 = 0.678571, IoU (1/3 + 3/4) / 2 = 0.541667)
    assert float(dice.result()) == pytest.approx(8 / 11)
    assert float(iou.result()) == pytest.approx(4 / 7)


def test_scores_an_empty_image_in_a_batch_adds_nothing():
    dice, iou = DiceScore(2), IoUScore(2)
    # class 0: image 0 empty and predicted empty, image 1 TRUTH / PRED; class 1: image 0 FULL / FULL_MISS_ONE,
    # image 1 empty and predicted empty
    t, p = images((EMPTY, FULL), (TRUTH, EMPTY)), images((EMPTY, FULL_MISS_ONE), (PRED, EMPTY))
    dice.update_state(t, p)
    iou.update_state(t, p)
    # class 0 pooled: tp 1, fp 1, fn 1 -> Dice 1/2, IoU 1/3 (per image it would be (1 + 1/2) / 2 = 0.75)
    # class 1 pooled: tp 3, fp 0, fn 1 -> Dice 6/7, IoU 3/4; the metric is the mean over classes
    assert float(dice.result()) == pytest.approx((1 / 2 + 6 / 7) / 2)
    assert float(iou.result()) == pytest.approx((1 / 3 + 3 / 4) / 2)
    per_class = DiceScore(2, class_index=1)
    per_class.update_state(t, p)
    assert float(per_class.result()) == pytest.approx(6 / 7)


# -- pretraining: reconstruction of blanked pixels ------------------------------------------------------------
# y_true holds [clean image, mask of blanked pixels] in its two channels; y_pred is the reconstruction.
# image A: clean all 0, one blanked pixel (top left), prediction [[0.4, 0.2], [0.2, 0.0]]
# image B: clean all 1, three blanked pixels, prediction [[1.0, 0.5], [0.0, 0.5]]
CLEAN_A, MASK_A, RECON_A = EMPTY, np.array([[1, 0], [0, 0]], "float32"), np.array([[0.4, 0.2], [0.2, 0.0]], "float32")
CLEAN_B, MASK_B, RECON_B = FULL, np.array([[1, 1], [1, 0]], "float32"), np.array([[1.0, 0.5], [0.0, 0.5]], "float32")


def pretrain_batch():
    return images((CLEAN_A, MASK_A), (CLEAN_B, MASK_B)), images((RECON_A,), (RECON_B,))


def test_reconstruction_l1_by_hand_default_outside_weight():
    t, p = pretrain_batch()
    # |error| A = [[0.4, 0.2], [0.2, 0]], weights [[1, 0.1], [0.1, 0.1]]: (0.4 + 0.02 + 0.02) / 1.3 = 0.338462
    # |error| B = [[0, 0.5], [1, 0.5]], weights [[1, 1], [1, 0.1]]: (0 + 0.5 + 1 + 0.05) / 3.1 = 0.5
    loss = ReconstructionLoss()
    assert (loss.kind, loss.outside_weight) == ("l1", 0.1)
    np.testing.assert_allclose(per_image(loss, t, p), [0.44 / 1.3, 0.5], atol=1e-6)
    # Keras averages the two: 0.419231 (pooled over the batch: 1.99 / 4.4 = 0.452273)
    assert float(loss(t, p)) == pytest.approx((0.44 / 1.3 + 0.5) / 2, abs=1e-6)


def test_reconstruction_l1_and_mse_by_hand_outside_weight_half():
    t, p = pretrain_batch()
    # weights A [[1, 0.5], [0.5, 0.5]] sum 2.5; weights B [[1, 1], [1, 0.5]] sum 3.5
    # L1:  A (0.4 + 0.1 + 0.1 + 0) / 2.5 = 0.24;       B (0 + 0.5 + 1 + 0.25) / 3.5 = 0.5
    # MSE: A (0.16 + 0.02 + 0.02 + 0) / 2.5 = 0.08;    B (0 + 0.25 + 1 + 0.125) / 3.5 = 11/28 = 0.392857
    l1, mse = ReconstructionLoss("l1", outside_weight=0.5), ReconstructionLoss("mse", outside_weight=0.5)
    np.testing.assert_allclose(per_image(l1, t, p), [0.24, 0.5], atol=1e-6)
    np.testing.assert_allclose(per_image(mse, t, p), [0.08, 11 / 28], atol=1e-6)
    # means 0.37 and 0.236429 (pooled: 2.35 / 6 = 0.391667 and 1.575 / 6 = 0.2625)
    assert float(l1(t, p)) == pytest.approx(0.37, abs=1e-6)
    assert float(mse(t, p)) == pytest.approx((0.08 + 11 / 28) / 2, abs=1e-6)


def test_reconstruction_outside_weight_zero_counts_blanked_pixels_only():
    t, p = pretrain_batch()
    # A: 0.4 / 1; B: (0 + 0.5 + 1) / 3 = 0.5; an image with nothing blanked has no weight at all and scores 0
    np.testing.assert_allclose(per_image(ReconstructionLoss(outside_weight=0.0), t, p), [0.4, 0.5], atol=1e-6)
    nothing = images((CLEAN_A, EMPTY))
    assert float(ReconstructionLoss(outside_weight=0.0)(nothing, images((RECON_A,)))) == 0.0


def test_blanked_mae_by_hand():
    t, p = pretrain_batch()
    # blanked pixels only: A 0.4 / 1 = 0.4; B (0 + 0.5 + 1) / 3 = 0.5
    np.testing.assert_allclose(np.asarray(blanked_mae(t, p)), [0.4, 0.5], atol=1e-6)
    # averaged by Keras as a metric: 0.45 (pooled over the batch: 1.9 / 4 = 0.475)
    metric = keras.metrics.MeanMetricWrapper(blanked_mae)
    metric.update_state(t, p)
    assert float(metric.result()) == pytest.approx(0.45, abs=1e-6)
    # an image with nothing blanked: 0, not 0 / 0
    assert float(np.asarray(blanked_mae(images((CLEAN_A, EMPTY)), images((RECON_A,))))[0]) == 0.0


@pytest.mark.parametrize("cls", [DiceLoss, BceDiceLoss, BceLoss, FocalTverskyLoss, ReconstructionLoss])
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
