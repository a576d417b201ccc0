"""Batch normalisation through TensorFlow's fused kernel while a U-Net trains on the TensorFlow backend.

Keras 3 runs BatchNormalization as separate moments, casts and element-wise ops; under mixed_bfloat16 on a CPU
that is half of a U-Net's training step, while TensorFlow's FusedBatchNormV3 (oneDNN on the CPU, cuDNN on a GPU)
does the same normalisation, in float32 inside, in one pass (benchmarks/README.md). `fuse_batch_norm` only changes
how each BatchNormalization layer of a model runs: the layers, their weights and their saved files stay stock
Keras, so a model.keras still loads with Keras alone, and on the JAX or PyTorch backend nothing changes."""

from __future__ import annotations

import keras


def fuse_batch_norm(model: keras.Model) -> int:
    """Run the model's 4-D, channels-last BatchNormalization layers through TensorFlow's fused kernel; how many.

    A no-op (0) on another backend. Outputs, gradients and the moving statistics match Keras's own layer."""
    if keras.backend.backend() != "tensorflow":
        return 0
    layers = list(_batch_norm_layers(model))
    for layer in layers:
        if not getattr(layer, "_keras_unet_fused", False):
            layer.call = _fused_call(layer, layer.call)
            layer._keras_unet_fused = True
    return len(layers)


def _batch_norm_layers(model):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.renorm and \
                layer.axis in (-1, 3) and layer.input is not None and len(layer.input.shape) == 4:
            yield layer


def _fused_call(layer, keras_call):
    """layer.call through tf.compat.v1.nn.fused_batch_norm; Keras's call for a mask or a synchronized layer."""
    import tensorflow as tf

    def call(inputs, training=None, mask=None):
        if mask is not None or layer.synchronized:  # synchronized: the global batch's statistics (train.distributed)
            return keras_call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = layer.gamma if layer.scale else tf.ones((channels,), "float32")
        beta = layer.beta if layer.center else tf.zeros((channels,), "float32")
        gamma, beta = tf.cast(gamma, "float32"), tf.cast(beta, "float32")
        if training and layer.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=layer.epsilon, is_training=True)[:3]
            # the kernel returns the unbiased (n - 1) variance; Keras's moving variance keeps the biased one
            n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            momentum = layer.momentum
            layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
            layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            outputs = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.cast(layer.moving_mean, "float32"),
                variance=tf.cast(layer.moving_variance, "float32"), epsilon=layer.epsilon, is_training=False)[0]
        return tf.cast(outputs, layer.compute_dtype)

    return call
