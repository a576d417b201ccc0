"""Export-time rewrites of a float32 U-Net that compute the same function in a form a converter keeps exact.

float16_exact_stem: the stem (the first convolution, 9 weights per filter on a one-channel image, whose outputs are
small differences of large terms) folded with its batch norm and split into two convolutions whose kernels are
each exact in float16 (hi = the kernel rounded to float16, lo = the rest), summed. Rounding the stem's weights to
float16 alone moves the JSRT refine stage's masks to Dice 0.9966 against float32 (every other layer together:
0.9999); the split stem keeps 0.9996 in `model_fp16.tflite`, for one more one-channel convolution."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from keras_unet.errors import ExportError

STEM_LAYER = "enc0_conv1"  # keras_unet.model.unet's first convolution


def float16_exact_stem(model: keras.Model, stem: str = STEM_LAYER) -> keras.Model:
    """The same network with its stem (and the batch norm after it) as a float16-exact hi + lo convolution pair."""
    try:
        conv = model.get_layer(stem)
    except ValueError:
        raise ExportError(f"tflite_fp16: the model has no `{stem}` layer") from None
    after = [layer for layer in model.layers if _reads(layer, conv.output)]
    norm = after[0] if len(after) == 1 and isinstance(after[0], layers.BatchNormalization) else None
    kernel, bias = _folded(conv, norm)
    high = kernel.astype(np.float16).astype(np.float64)
    low = (kernel - high).astype(np.float16).astype(np.float64)  # hi + lo: within 2^-22 of the kernel
    replaced = conv if norm is None else norm  # the layer whose output the pair stands for
    activation = conv.get_config().get("activation")

    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs]
    new = {id(t): n for t, n in zip(model.inputs, inputs)}
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer) or (layer is conv and norm is not None):
            continue
        if layer is replaced:
            settings = {**conv.get_config(), "activation": None}
            x = new[id(conv.input)]
            parts = []
            for name, weights in (("hi", [high, bias]), ("lo", [low])):
                part = layers.Conv2D(**{**settings, "name": f"{stem}_{name}", "use_bias": name == "hi"})
                parts.append(part(x))
                part.set_weights([w.astype(np.float32) for w in weights])
            y = layers.Add(name=f"{stem}_sum")(parts)
            if activation not in (None, "linear"):
                y = layers.Activation(activation, name=f"{stem}_activation")(y)
            new[id(layer.output)] = y
            continue
        new[id(layer.output)] = layer(keras.tree.map_structure(lambda t: new[id(t)], layer.input))
    return keras.Model(inputs, [new[id(t)] for t in model.outputs], name=model.name)


def _reads(layer, tensor) -> bool:
    return not isinstance(layer, layers.InputLayer) and any(t is tensor for t in keras.tree.flatten(layer.input))


def _folded(conv, norm) -> tuple[np.ndarray, np.ndarray]:
    """The convolution's kernel and bias (float64) with the inference-time batch norm after it folded in."""
    kernel = np.asarray(conv.kernel, dtype=np.float64)
    bias = np.asarray(conv.bias, dtype=np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    if norm is None:
        return kernel, bias
    gamma = np.asarray(norm.gamma, dtype=np.float64) if norm.scale else 1.0
    beta = np.asarray(norm.beta, dtype=np.float64) if norm.center else 0.0
    scale = gamma / np.sqrt(np.asarray(norm.moving_variance, dtype=np.float64) + norm.epsilon)
    return kernel * scale, (bias - np.asarray(norm.moving_mean, dtype=np.float64)) * scale + beta
