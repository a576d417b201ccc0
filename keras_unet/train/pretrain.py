"""Better-than-random starting weights: copy matching layers from an earlier model (--init-weights), and
self-supervised inpainting pretraining of the U-Net on unlabelled radiographs (--pretrain DIR)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from keras_unet.config import Config
from keras_unet.data.pipeline import AUTOTUNE, augment_example, decode_gray, letterbox, normalize
from keras_unet.errors import ConfigError, DataError, first_line
from keras_unet.io import images
from keras_unet.io.files import read_bytes, write_json_atomic
from keras_unet.model.fused import fuse_batch_norm
from keras_unet.model.losses import ReconstructionLoss, blanked_mae
from keras_unet.model.saving import (SourceWeights, differences, layer_weights, match, model_settings, read_source,
                                     save_layer_weights, transfer)
from keras_unet.model.unet import model_from_config
from keras_unet.run_folder import BACKUP_DIR, CONFIG_FILE, PRETRAIN_DIR, PRETRAIN_HISTORY, PRETRAIN_WEIGHTS
from keras_unet.train.fit import fit, resume_history
from keras_unet.train.history import read_history

HEAD = "reconstruction"  # the pretraining network's output layer (never copied into a segmentation U-Net)
REFERENCE_SIZE = 256  # pretrain.patch_size is in pixels at this input size
SKIP_FOLDERS = ("masks",)  # subfolders of the pretraining folder that hold masks, not radiographs


# -- the starting point of a training run (called by training.train) ----------------------------------


def check_start(config: Config) -> SourceWeights | None:
    """Before the run directory is touched: find --pretrain's and --self-train's images, and read --init-weights,
    checking it fits."""
    if config.pretrain_data:
        list_unlabelled(config.pretrain_data)
    if config.self_train.data:
        list_unlabelled(config.self_train.data, "--self-train")
        if Path(config.self_train.data).expanduser().resolve() == Path(config.data).expanduser().resolve():
            raise ConfigError(f"{config.self_train.data}: --self-train names the labelled --data folder itself; "
                              "give a folder of unlabelled images")
    if not config.init_weights:
        return None
    source = read_source(config.init_weights)
    here = model_settings(config)
    copied, _ = match(model_from_config(config), source)
    if not copied:
        diff = differences(here, source.settings)
        detail = f"; settings differ: {', '.join(diff)}" if diff else ""
        raise ConfigError(f"{source.path}: shares no layer (same name and weight shapes) with this model{detail}")
    return source


def start_from(model: keras.Model, config: Config, source: SourceWeights | None, out, strategy=None,
               log=print) -> None:
    """Give a freshly built U-Net its starting weights: pretrain first when asked (from source), then copy."""
    if config.pretrain_data:
        source = read_source(run_pretraining(config, out, strategy, source, log))
    if source is not None:
        transfer(model, source, model_settings(config), log)


# -- unlabelled images ---------------------------------------------------------------------------------


def list_unlabelled(folder, flag: str = "--pretrain") -> list[Path]:
    """Every image file under folder (subfolders too, but not hidden ones or masks/), sorted; flag names its option."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: {flag} folder not found" if not folder.exists()
                          else f"{folder}: {flag} takes a folder of images, not a file")
    return images.list_images(folder, recursive=True, skip=SKIP_FOLDERS, purpose=flag)


def _as_16bit_scale(array: np.ndarray) -> np.ndarray:
    """A decoded image as float32 on the 16-bit scale, as training's cached PNG would decode."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) * 257.0
    if array.dtype == np.uint16:
        return array.astype(np.float32)
    return images.float_to_uint16(array).astype(np.float32)  # float TIFF: min..max to 0..65535, as the cache does


def load_image(path, config: Config) -> np.ndarray:
    """One image at network size, (S, S, 1) float32 in [0, 1]: training's decoding, normalisation and letterbox."""
    data = read_bytes(path)
    if images.is_gray_png(data):
        try:
            raw = decode_gray(str(path))  # exactly what training reads for a grayscale PNG
        except tf.errors.OpError as exc:
            raise DataError(path, f"cannot decode the PNG ({first_line(exc)[:200]})") from None
    else:
        raw = tf.constant(_as_16bit_scale(images.decode_image(data, path))[..., None])
    return letterbox(normalize(raw, config.normalization), config.image_size).numpy()


def load_images(paths, config: Config, log=print) -> np.ndarray:
    """All readable images as (N, S, S, 1) float32; unreadable ones are left out with one line; none is an error."""
    loaded, bad = [], []
    for path in paths:
        try:
            loaded.append(load_image(path, config))
        except DataError as exc:
            bad.append(str(exc))
    if bad:
        log(f"pretraining: {len(bad)} of {len(paths)} images cannot be read and are left out (first: {bad[0]})")
    if not loaded:
        raise DataError(config.pretrain_data, f"none of the {len(paths)} images can be read for pretraining")
    return np.stack(loaded).astype(np.float32)


# -- the inpainting task -------------------------------------------------------------------------------


def patch_sides(size: int, pretrain) -> tuple[int, int]:
    """Smallest and largest rectangle side in pixels at this input size (pretrain.patch_size is at 256 px)."""
    scale = size / REFERENCE_SIZE
    low = max(1, min(size, round(pretrain.patch_size[0] * scale)))
    high = max(low, min(size, round(pretrain.patch_size[1] * scale)))
    return low, high


def _seed(seed, index: int):
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(index, tf.int64)])


def sample_patches(seed, size: int, pretrain):
    """(boxes, count): int32 (most, 4) rows of [top, left, height, width] inside the image; the first count are used."""
    fewest, most = pretrain.patches
    low, high = patch_sides(size, pretrain)
    count = tf.random.stateless_uniform([], _seed(seed, 20), minval=fewest, maxval=most + 1, dtype=tf.int32)
    sides = tf.random.stateless_uniform([most, 2], _seed(seed, 21), minval=low, maxval=high + 1, dtype=tf.int32)
    where = tf.random.stateless_uniform([most, 2], _seed(seed, 22))
    corner = tf.cast(tf.floor(where * tf.cast(size - sides + 1, tf.float32)), tf.int32)
    corner = tf.minimum(corner, size - sides)  # float rounding can never push a box out
    return tf.concat([corner, sides], axis=1), count


def patch_mask(boxes, count, size: int):
    """(S, S, 1) float32: 1 inside the first count boxes, 0 elsewhere."""
    top, left, height, width = tf.unstack(boxes, axis=1)
    r = tf.range(size)[None, :]
    rows = (r >= top[:, None]) & (r < (top + height)[:, None])
    cols = (r >= left[:, None]) & (r < (left + width)[:, None])
    active = tf.range(tf.shape(boxes)[0]) < count
    inside = rows[:, :, None] & cols[:, None, :] & active[:, None, None]
    return tf.cast(tf.reduce_any(inside, axis=0), tf.float32)[..., None]


def blank(image, boxes, count, fill: float = 0.0):
    """(blanked image, mask): the first count boxes set to fill, every other pixel unchanged."""
    mask = patch_mask(boxes, count, int(image.shape[0]))
    return image * (1.0 - mask) + fill * mask, mask


def make_pair(image, seed, config: Config, augment_config: Config, flip):
    """(input, target) for one image: target = [clean image, blank mask]; input = blanked, noisy image."""
    size = config.image_size
    if config.augment.enabled:
        image, _ = augment_example(image, tf.zeros([size, size, 0]), seed, augment_config, flip)
    boxes, count = sample_patches(seed, size, config.pretrain)
    blanked, mask = blank(image, boxes, count)
    if config.pretrain.noise:
        sigma = tf.random.stateless_uniform([], _seed(seed, 23), 0.0, config.pretrain.noise)
        blanked = blanked + sigma * tf.random.stateless_normal(tf.shape(blanked), _seed(seed, 24))
    noisy = tf.clip_by_value(blanked, 0.0, 1.0)
    return tf.ensure_shape(noisy, [size, size, 1]), tf.ensure_shape(tf.concat([image, mask], -1), [size, size, 2])


def pretrain_dataset(array: np.ndarray, config: Config) -> tf.data.Dataset:
    """Shuffled, augmented, blanked batches of (input, [target, mask]) from preloaded images."""
    augment_config = dataclasses.replace(config, classes=[], augment=dataclasses.replace(config.augment, noise=0.0))
    flip = tf.constant([], tf.int32) if config.augment.flip else None  # no labels: any image may be mirrored
    ds = tf.data.Dataset.from_tensor_slices(array)
    ds = ds.shuffle(len(array), seed=config.seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=config.seed + 1, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda image, s: make_pair(image, s, config, augment_config, flip), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(config.pretrain.batch_size).with_options(options).prefetch(AUTOTUNE)


def pretrain_model(config: Config) -> keras.Model:
    """The segmentation U-Net's body (identical layer names) with a 1-channel linear reconstruction head."""
    body = model_from_config(config, num_classes=1)
    features = body.get_layer("logits").input
    image = layers.Conv2D(1, 1, dtype="float32", name=HEAD)(features)
    return keras.Model(body.input, image, name="unet_pretrain")


def run_pretraining(config: Config, out, strategy=None, source: SourceWeights | None = None, log=print) -> Path:
    """Pretrain on config.pretrain_data into RUN/pretrain/ (weights, history, config); reuse a finished one."""
    folder = Path(out) / PRETRAIN_DIR
    weights_path = folder / PRETRAIN_WEIGHTS
    if weights_path.is_file():
        log(f"pretraining: finished earlier, reusing {weights_path}")
        return weights_path
    folder.mkdir(parents=True, exist_ok=True)
    paths = list_unlabelled(config.pretrain_data)
    started = time.time()
    array = load_images(paths, config, log)
    p = config.pretrain
    steps = math.ceil(len(array) / p.batch_size)
    low, high = patch_sides(config.image_size, p)
    log(f"pretraining: {len(array)} unlabelled images from {config.pretrain_data} read in "
        f"{time.time() - started:.0f} s; {p.epochs} epochs of inpainting ({p.patches[0]}-{p.patches[1]} blanked "
        f"rectangles of {low}-{high} px, noise up to {p.noise}, {p.loss} loss)")
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = pretrain_model(config)
        if source is not None:
            transfer(model, source, model_settings(config), log, what="pretraining starts from")
        fuse_batch_norm(model)
        schedule = keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=max(1, p.epochs * steps),
                                                          alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=ReconstructionLoss(p.loss, p.outside_weight),
                      metrics=[blanked_mae], jit_compile=config.jit_compile)
    history = folder / PRETRAIN_HISTORY
    resuming = (folder / BACKUP_DIR).exists()
    resume_history(folder, history, resuming)
    started = time.time()
    fit(model, pretrain_dataset(array, config), p.epochs, folder, history, resuming and history.exists(),
        what="pretraining loss", advice=f"lower pretrain.learning_rate ({p.learning_rate})")
    body = {name: values for name, values in layer_weights(model).items() if name != HEAD}
    write_json_atomic(folder / CONFIG_FILE, config.to_dict())
    save_layer_weights(weights_path, body, {k: v for k, v in model_settings(config).items() if k != "classes"})
    shutil.rmtree(folder / BACKUP_DIR, ignore_errors=True)
    rows = read_history(history)
    if rows:
        log(f"pretraining: loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, blanked-pixel error "
            f"{rows[0]['blanked_mae']:.4f} -> {rows[-1]['blanked_mae']:.4f} in {time.time() - started:.0f} s; "
            f"weights: {weights_path}")
    return weights_path
