"""tf.data input pipeline: decode, normalise, letterbox, augment on the fly, batch, prefetch."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from keras_unet.classes import flip_permutation
from keras_unet.imaging.crops import structure_boxes
from keras_unet.imaging.postprocess import class_min_areas
from keras_unet.io import images

AUTOTUNE = tf.data.AUTOTUNE



def decode_gray(path):
    """Read a single-channel PNG (8 or 16 bit) as float32 (H, W, 1) on the 16-bit scale."""
    return tf.cast(tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint16), tf.float32)


def intensity_window(image, normalization):
    """(low, high) intensities of the normalisation, as preprocess.intensity_window computes them."""
    if normalization.method == "none":
        return tf.constant(0.0), tf.constant(65535.0)
    shape = tf.shape(image)
    step = tf.maximum(1, tf.maximum(shape[0], shape[1]) // max(normalization.sample_grid, 1))
    sample = tf.sort(tf.reshape(image[::step, ::step], [-1]))
    if normalization.method == "minmax":
        return sample[0], sample[-1]
    n = tf.cast(tf.size(sample) - 1, tf.float64)

    def at(q):
        return sample[tf.cast(tf.floor(q / 100.0 * n + 0.5), tf.int32)]

    return at(normalization.low), at(normalization.high)


def normalize(image, normalization):
    """Float image to [0, 1] by the run's normalisation."""
    lo, hi = intensity_window(image, normalization)
    return tf.clip_by_value((image - lo) / tf.maximum(hi - lo, 1e-6), 0.0, 1.0)


def letterbox(array, size: int):
    """Resize (H, W, C) keeping the aspect ratio (area when shrinking, bilinear when enlarging) and zero-pad."""
    shape = tf.shape(array)
    h, w = shape[0], shape[1]
    scale = size / tf.cast(tf.maximum(h, w), tf.float64)
    nh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
    nw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))
    shrinking = nh * nw < h * w
    resized = tf.cond(shrinking,
                      lambda: tf.image.resize(array, [nh, nw], method="area"),
                      lambda: tf.image.resize(array, [nh, nw], method="bilinear"))
    top, left = (size - nh) // 2, (size - nw) // 2
    return tf.image.pad_to_bounding_box(resized, top, left, size, size)


def load_example(image_path, mask_paths, config):
    """One (image, masks) pair at network size: image (S, S, 1) in [0, 1], masks (S, S, C) in [0, 1]."""
    image = normalize(decode_gray(image_path), config.normalization)
    masks = [tf.cast(tf.io.decode_png(tf.io.read_file(mask_paths[c]), channels=1), tf.float32) / 255.0
             for c in range(len(config.classes))]
    stacked = tf.concat([image] + masks, axis=-1)
    stacked = letterbox(stacked, config.image_size)
    size = config.image_size
    stacked = tf.ensure_shape(stacked, [size, size, 1 + len(config.classes)])
    return stacked[..., :1], stacked[..., 1:]


def _uniform(seed, index, low, high):
    return tf.random.stateless_uniform([], seed=tf.stack([seed, tf.constant(index, tf.int64)]),
                                       minval=low, maxval=high)


def affine_matrix(seed, config):
    """Random rotation, scale and shift as the 8-vector tf.raw_ops.ImageProjectiveTransformV3 takes."""
    a = config.augment
    size = float(config.image_size)
    angle = _uniform(seed, 0, -a.rotation, a.rotation) * (math.pi / 180.0)
    scale = _uniform(seed, 1, 1.0 - a.scale, 1.0 + a.scale)
    tx = _uniform(seed, 2, -a.shift, a.shift) * size
    ty = _uniform(seed, 3, -a.shift, a.shift) * size
    c = (size - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # output pixel (x, y) samples the input at R/s (p - c - t) + c
    x0 = c - cos * (c + tx) + sin * (c + ty)
    y0 = c - sin * (c + tx) - cos * (c + ty)
    return tf.stack([cos, -sin, x0, sin, cos, y0, 0.0, 0.0])


def augment_example(image, masks, seed, config, flip_perm):
    """Random geometry (shared by image and masks), left/right flip with class swap, and intensity changes."""
    a = config.augment
    size = config.image_size
    stacked = tf.concat([image, masks], axis=-1)
    if a.rotation or a.scale or a.shift:
        stacked = tf.raw_ops.ImageProjectiveTransformV3(
            images=stacked[None], transforms=affine_matrix(seed, config)[None],
            output_shape=tf.constant([size, size]), fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    image, masks = stacked[..., :1], stacked[..., 1:]
    if flip_perm is not None:
        flip = _uniform(seed, 4, 0.0, 1.0) < 0.5
        # tf.cond computes only the branch taken (tf.where would build both and select: 3x the work)
        image, masks = tf.cond(flip, lambda: (image[:, ::-1], tf.gather(masks[:, ::-1], flip_perm, axis=-1)),
                               lambda: (image, masks))
    if a.contrast:
        mean = tf.reduce_mean(image)
        image = (image - mean) * _uniform(seed, 5, 1.0 - a.contrast, 1.0 + a.contrast) + mean
    if a.brightness:
        image = image + _uniform(seed, 6, -a.brightness, a.brightness)
    image = tf.clip_by_value(image, 0.0, 1.0)
    if a.gamma:
        image = tf.pow(image, tf.exp(_uniform(seed, 7, -a.gamma, a.gamma)))
    if a.noise:
        sigma = _uniform(seed, 8, 0.0, a.noise)
        noise_seed = tf.stack([seed, tf.constant(9, tf.int64)])
        image = image + sigma * tf.random.stateless_normal(tf.shape(image), seed=noise_seed)
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, [size, size, 1]), tf.ensure_shape(masks, [size, size, len(config.outputs())])


def flip_for(config):
    """Channel permutation for the flip augmentation, or None when flipping is off or unsafe for the classes."""
    if not (config.augment.enabled and config.augment.flip):
        return None
    return flip_permutation(config.outputs())


def crop_items(samples, config) -> list:
    """(sample, mask path, (top, left, side)) for every structure of the crops classes in the samples' masks: its
    largest part, or each part of a crops.components class (of at least the class's postprocess min area)."""
    items = []
    min_areas = dict(zip(config.classes, class_min_areas(config.postprocess, config.classes)))
    for sample in samples:
        for name in config.crops.classes:
            path = sample.mask_paths[config.classes.index(name)]
            for box in structure_boxes(images.read_image(path), config.crops.margin,
                                       name in config.crops.components, min_areas[name]):
                items.append((sample, path, box))
    return items


def jittered_box(box, seed, jitter: float, height, width):
    """The box shifted by up to +-jitter of its side and scaled by up to (1 +- jitter), still touching the image."""
    box = tf.cast(box, tf.float32)
    top, left, side = box[0], box[1], box[2]
    if jitter:
        new_side = tf.maximum(1.0, tf.round(side * tf.exp(_uniform(seed, 10, -math.log1p(jitter), math.log1p(jitter)))))
        cy = top + side / 2.0 + _uniform(seed, 11, -jitter, jitter) * side
        cx = left + side / 2.0 + _uniform(seed, 12, -jitter, jitter) * side
        top, left, side = tf.floor(cy - new_side / 2.0), tf.floor(cx - new_side / 2.0), new_side
    side = tf.cast(side, tf.int32)
    top = tf.clip_by_value(tf.cast(top, tf.int32), 1 - side, height - 1)
    left = tf.clip_by_value(tf.cast(left, tf.int32), 1 - side, width - 1)
    return top, left, side


def cut_square(array, top, left, side):
    """The (side, side, C) square of array at (top, left), zero where it reaches past the border (crops.crop)."""
    shape = tf.shape(array)
    y0, y1 = tf.maximum(top, 0), tf.minimum(top + side, shape[0])
    x0, x1 = tf.maximum(left, 0), tf.minimum(left + side, shape[1])
    return tf.pad(array[y0:y1, x0:x1], [[y0 - top, top + side - y1], [x0 - left, left + side - x1], [0, 0]])


def load_full(image_path, mask_path, config):
    """The whole image, normalised (H, W, 1) float32, and one structure's mask (H, W, 1) uint8, to cut crops from."""
    image = normalize(decode_gray(image_path), config.normalization)
    return image, tf.io.decode_png(tf.io.read_file(mask_path), channels=1)


def crop_example(image, mask, box, seed, config, jitter: float):
    """One (image, mask) crop at network size, cut from the normalised whole image as `RefinedPredictor` does."""
    shape = tf.shape(image)
    top, left, side = jittered_box(box, seed, jitter, shape[0], shape[1])
    # cut first, convert after: the whole image is never copied (JSRT refine stage: 3.2 -> 1.0 CPU-s an epoch)
    mask = tf.cast(cut_square(mask, top, left, side), tf.float32) / 255.0
    stacked = tf.concat([cut_square(image, top, left, side), mask], axis=-1)
    size = config.image_size
    stacked = tf.ensure_shape(letterbox(stacked, size), [size, size, 2])
    return stacked[..., :1], stacked[..., 1:]


def _crop_dataset(items, config, training: bool, cache: bool) -> tf.data.Dataset:
    """Unbatched (image, mask) crops of crop_items, the mask that structure's; jittered anew each epoch."""
    if not items:
        raise ValueError(f"none of the samples holds a {' or '.join(config.crops.classes)} structure to crop")
    image_paths = [str(s.image_path) for s, _, _ in items]
    mask_paths = [str(path) for _, path, _ in items]
    boxes = np.array([box for _, _, box in items], dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths, boxes))
    ds = ds.map(lambda i, m, b: (*load_full(i, m, config), b), num_parallel_calls=AUTOTUNE, deterministic=True)
    zero_seed = tf.constant(0, tf.int64)
    if not training:
        ds = ds.map(lambda i, m, b: crop_example(i, m, b, zero_seed, config, 0.0), num_parallel_calls=AUTOTUNE)
        return ds.cache() if cache else ds
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(len(items), seed=config.seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=config.seed + 1, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda e, s: crop_example(e[0], e[1], e[2], s, config, config.crops.jitter), num_parallel_calls=AUTOTUNE)


def make_dataset(samples, config, training: bool, batch_size: int | None = None,
                 cache: bool = True, items: list | None = None) -> tf.data.Dataset:
    """Batched (image, masks) dataset, of whole images or of crops (crops section); training adds augmentation.

    items: the samples' crop_items when the caller has them already (crops section only)."""
    if not samples:
        raise ValueError("no samples to build a dataset from")
    if config.crops.classes:
        ds = _crop_dataset(crop_items(samples, config) if items is None else items, config, training, cache)
    else:
        image_paths = [str(s.image_path) for s in samples]
        mask_paths = [[str(p) for p in s.mask_paths] for s in samples]
        ds = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
        ds = ds.map(lambda i, m: load_example(i, m, config), num_parallel_calls=AUTOTUNE, deterministic=True)
        if cache:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(len(samples), seed=config.seed, reshuffle_each_iteration=True)
    if training:
        if config.augment.enabled:
            perm = flip_for(config)
            perm = None if perm is None else tf.constant(perm, tf.int32)
            seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip((ds, seeds))
            ds = ds.map(lambda pair, s: augment_example(pair[0], pair[1], s, config, perm),
                        num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size or config.batch_size, drop_remainder=False)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)
