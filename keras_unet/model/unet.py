"""Functional-API U-Net builder (pure Keras 3: runs on the TensorFlow, JAX and PyTorch backends)."""

from __future__ import annotations

import keras
from keras import layers


def conv_block(x, filters: int, batch_norm: bool, name: str):
    """Two 3x3 convolutions, each followed by optional batch norm and ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def upsample(x, filters: int, mode: str, name: str):
    """Double the spatial size: a 2x2 transposed convolution, or bilinear resize and a 1x1 convolution."""
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resize")(x)
    return layers.Conv2D(filters, 1, padding="same", name=f"{name}_up")(x)


def build_unet(num_classes: int, depth: int = 4, base_filters: int = 16, batch_norm: bool = True,
               dropout: float = 0.0, upsampling: str = "transpose", input_channels: int = 1,
               name: str = "unet") -> keras.Model:
    """U-Net returning per-class sigmoid probabilities (float32 under mixed precision); H and W may be None."""
    if upsampling not in ("transpose", "bilinear"):
        raise ValueError(f"upsampling must be 'transpose' or 'bilinear', got {upsampling!r}")
    inputs = keras.Input(shape=(None, None, input_channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2 ** level, batch_norm, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_block(x, base_filters * 2 ** depth, batch_norm, "bottleneck")
    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = upsample(x, filters, upsampling, f"dec{level}")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, filters, batch_norm, f"dec{level}")
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    probs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, probs, name=name)


def model_from_config(config, num_classes: int | None = None) -> keras.Model:
    """U-Net shaped by a Config's model section, with one output channel per output (`Config.outputs`)."""
    m = config.model
    return build_unet(num_classes or len(config.outputs()), depth=m.depth, base_filters=m.base_filters,
                      batch_norm=m.batch_norm, dropout=m.dropout, upsampling=m.upsampling)
