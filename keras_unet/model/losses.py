"""Segmentation losses and metrics in pure keras.ops, registered so `.keras` files load with safe_mode=True."""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "keras_unet"
SPATIAL = (1, 2)  # axes of (batch, height, width, classes) summed per image and class


def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice per image and class, shape (batch, classes); an empty target with an empty prediction scores 1."""
    intersection = ops.sum(y_true * y_pred, axis=SPATIAL)
    total = ops.sum(y_true, axis=SPATIAL) + ops.sum(y_pred, axis=SPATIAL)
    return (2.0 * intersection + smooth) / (total + smooth)


def tversky_index(y_true, y_pred, alpha: float, beta: float, smooth: float = 1.0):
    """Tversky index per image and class; alpha weighs false negatives, beta false positives."""
    tp = ops.sum(y_true * y_pred, axis=SPATIAL)
    fn = ops.sum(y_true * (1.0 - y_pred), axis=SPATIAL)
    fp = ops.sum((1.0 - y_true) * y_pred, axis=SPATIAL)
    return (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)


def _as_float(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceLoss(keras.losses.Loss):
    """1 - soft Dice, averaged over classes, per image."""

    def __init__(self, smooth: float = 1.0, name: str = "dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = smooth

    def call(self, y_true, y_pred):
        y_true, y_pred = _as_float(y_true, y_pred)
        return 1.0 - ops.mean(soft_dice(y_true, y_pred, self.smooth), axis=-1)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BceDiceLoss(keras.losses.Loss):
    """Binary cross-entropy (mean over pixels and classes) plus the Dice loss, per image."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 name: str = "bce_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def call(self, y_true, y_pred):
        y_true, y_pred = _as_float(y_true, y_pred)
        bce = ops.mean(ops.binary_crossentropy(y_true, y_pred), axis=(1, 2, 3))
        dice = 1.0 - ops.mean(soft_dice(y_true, y_pred, self.smooth), axis=-1)
        return self.bce_weight * bce + self.dice_weight * dice

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight,
                "dice_weight": self.dice_weight, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BceLoss(keras.losses.Loss):
    """Binary cross-entropy alone (mean over pixels and classes), per image: the loss of the classic U-Net."""

    def __init__(self, name: str = "bce_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true, y_pred = _as_float(y_true, y_pred)
        return ops.mean(ops.binary_crossentropy(y_true, y_pred), axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package=PACKAGE)
class FocalTverskyLoss(keras.losses.Loss):
    """(1 - Tversky index) ** gamma averaged over classes, per image (Abraham & Khan 2019)."""

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75, smooth: float = 1.0,
                 name: str = "focal_tversky_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth

    def call(self, y_true, y_pred):
        y_true, y_pred = _as_float(y_true, y_pred)
        ti = tversky_index(y_true, y_pred, self.alpha, self.beta, self.smooth)
        return ops.mean(ops.power(ops.maximum(1.0 - ti, 0.0), self.gamma), axis=-1)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "gamma": self.gamma, "smooth": self.smooth}


LOSSES = {"bce_dice": BceDiceLoss, "bce": BceLoss, "dice": DiceLoss, "focal_tversky": FocalTverskyLoss}


def get_loss(name: str) -> keras.losses.Loss:
    """Loss instance by its config name (bce_dice, bce, dice, focal_tversky)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]()


class _OverlapScore(keras.metrics.Metric):
    """Accumulates thresholded true/false positives and false negatives per class over a whole dataset."""

    def __init__(self, num_classes: int, class_index: int | None = None, threshold: float = 0.5,
                 name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.class_index = class_index
        self.threshold = float(threshold)
        shape = (self.num_classes,)
        self.tp = self.add_variable(shape=shape, initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=shape, initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=shape, initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(ops.greater(ops.cast(y_true, "float32"), 0.5), "float32")
        p = ops.cast(ops.greater(ops.cast(y_pred, "float32"), self.threshold), "float32")
        axes = (0, 1, 2)
        self.tp.assign_add(ops.sum(t * p, axis=axes))
        self.fp.assign_add(ops.sum((1.0 - t) * p, axis=axes))
        self.fn.assign_add(ops.sum(t * (1.0 - p), axis=axes))

    def per_class(self):
        raise NotImplementedError

    def result(self):
        scores = self.per_class()
        if self.class_index is None:
            return ops.mean(scores)
        return scores[self.class_index]

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "class_index": self.class_index, "threshold": self.threshold}


def _ratio(numerator, denominator):
    """numerator / denominator, with 0 / 0 read as a perfect 1 (nothing to find, nothing found)."""
    safe = ops.where(denominator > 0, denominator, 1.0)
    return ops.where(denominator > 0, numerator / safe, 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceScore(_OverlapScore):
    """Dice of thresholded masks over the dataset, one class or averaged over classes."""

    def per_class(self):
        return _ratio(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable(package=PACKAGE)
class IoUScore(_OverlapScore):
    """Intersection over union of thresholded masks over the dataset, one class or averaged."""

    def per_class(self):
        return _ratio(self.tp, self.tp + self.fp + self.fn)


def segmentation_metrics(classes) -> list:
    """Mean Dice and IoU plus a Dice per class, named dice, iou and dice_<class>."""
    n = len(classes)
    metrics = [DiceScore(n, name="dice"), IoUScore(n, name="iou")]
    if n > 1:
        metrics += [DiceScore(n, class_index=i, name=f"dice_{c}") for i, c in enumerate(classes)]
    return metrics


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReconstructionLoss(keras.losses.Loss):
    """Per image, L1 or squared error: weight 1 on blanked pixels, outside_weight elsewhere (y_true: [clean, mask])."""

    def __init__(self, kind: str = "l1", outside_weight: float = 0.1, name: str = "reconstruction_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.kind, self.outside_weight = kind, outside_weight

    def call(self, y_true, y_pred):
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        target, mask = y_true[..., :1], y_true[..., 1:2]
        error = ops.abs(y_pred - target) if self.kind == "l1" else ops.square(y_pred - target)
        weight = mask + self.outside_weight * (1.0 - mask)
        return ops.sum(weight * error, axis=(1, 2, 3)) / ops.maximum(ops.sum(weight, axis=(1, 2, 3)), 1e-6)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "outside_weight": self.outside_weight}


@keras.saving.register_keras_serializable(package=PACKAGE)
def blanked_mae(y_true, y_pred):
    """Mean absolute error over the blanked pixels only, per image (the same yardstick for either loss)."""
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    mask = y_true[..., 1:2]
    error = mask * ops.abs(y_pred - y_true[..., :1])
    return ops.sum(error, axis=(1, 2, 3)) / ops.maximum(ops.sum(mask, axis=(1, 2, 3)), 1.0)
