"""Better-than-random starting weights: copy matching layers from an earlier model (--init-weights), and
self-supervised inpainting pretraining of the U-Net on unlabelled radiographs (--pretrain DIR)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from keras_unet import __version__, images
from keras_unet.config import Config, load_config
from keras_unet.data import AUTOTUNE, augment_example, decode_gray, letterbox, normalize
from keras_unet.errors import ConfigError, DataError, KerasUnetError, first_line
from keras_unet.model import model_from_config

PRETRAIN_DIR = "pretrain"  # inside the run directory
WEIGHTS_FILE = "body.weights.npz"  # every pretrained layer but the reconstruction head, keyed by layer name
HISTORY_FILE = "pretrain_history.csv"
HEAD = "reconstruction"  # the pretraining network's output layer (never copied into a segmentation U-Net)
REFERENCE_SIZE = 256  # pretrain.patch_size is in pixels at this input size
SKIP_FOLDERS = ("masks",)  # subfolders of the pretraining folder that hold masks, not radiographs
_FORMAT = "keras_unet.layer_weights/1"
_SHAPE_SETTINGS = ("depth", "base_filters", "batch_norm", "upsampling")


# -- weights by layer name -----------------------------------------------------------------------------


@dataclass
class SourceWeights:
    """Weights to start from: {layer name: [arrays]}, the file they came from and its settings when known."""

    path: Path
    layers: dict
    settings: dict | None = None


def model_settings(config: Config, num_classes: int | None = None) -> dict:
    """The settings that decide a U-Net's layer names and weight shapes."""
    settings = {f"model.{name}": getattr(config.model, name) for name in _SHAPE_SETTINGS}
    settings["classes"] = len(config.classes) if num_classes is None else num_classes
    return settings


def layer_weights(model: keras.Model) -> dict:
    """{layer name: list of numpy arrays} for every layer that has weights."""
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def save_layer_weights(path, weights: dict, settings: dict) -> None:
    """Write {layer name: arrays} as an .npz (key 'layer/index', plus '__meta__' JSON), atomically."""
    path = Path(path)
    arrays = {f"{name}/{i}": value for name, values in weights.items() for i, value in enumerate(values)}
    meta = {"format": _FORMAT, "version": __version__, "settings": settings,
            "layers": {name: len(values) for name, values in weights.items()}}
    arrays["__meta__"] = np.array(json.dumps(meta))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_source(path) -> SourceWeights:
    """Weights by layer name from a model.keras, a run folder, or a pretraining body.weights.npz (or its folder)."""
    given = Path(path).expanduser()
    what = f"give a model.keras, a run folder or a pretraining {WEIGHTS_FILE}"
    if not given.exists():
        raise ConfigError(f"{given}: init weights not found ({what})")
    file = given
    if given.is_dir():
        candidates = (given / "model.keras", given / WEIGHTS_FILE, given / PRETRAIN_DIR / WEIGHTS_FILE)
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise ConfigError(f"{given}: folder holds no model.keras or {WEIGHTS_FILE} to start from ({what})")
    if file.suffix == ".keras":
        weights, settings = _read_keras(file), None
    elif file.suffix == ".npz":
        weights, settings = _read_npz(file)
        beside = _settings_beside(file)  # a pretraining file has no output layer: its class count says nothing
        return SourceWeights(file, weights, {k: v for k, v in (beside or settings or {}).items() if k != "classes"})
    else:
        raise ConfigError(f"{file}: cannot start from this kind of file ({what})")
    return SourceWeights(file, weights, _settings_beside(file) or settings)


def _read_keras(file: Path) -> dict:
    try:
        model = keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as exc:  # a zip, JSON or h5 problem, or an unknown layer: all mean "cannot use this file"
        raise DataError(file, f"cannot read the model ({first_line(exc)[:200]})") from None
    return layer_weights(model)


def _read_npz(file: Path) -> tuple[dict, dict | None]:
    try:
        with np.load(file, allow_pickle=False) as data:
            if "__meta__" not in data.files:
                raise DataError(file, f"not a keras_unet weights file (no __meta__ entry); {WEIGHTS_FILE} is "
                                      "written by --pretrain")
            meta = json.loads(str(data["__meta__"]))
            weights = {name: [data[f"{name}/{i}"] for i in range(count)] for name, count in meta["layers"].items()}
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(file, f"cannot read the weights file ({first_line(exc)[:200]})") from None
    return weights, meta.get("settings")


def _settings_beside(file: Path) -> dict | None:
    saved = file.parent / "config.json"
    if not saved.is_file():
        return None
    try:
        return model_settings(load_config(saved))
    except KerasUnetError:
        return None


def match(model: keras.Model, source: SourceWeights) -> tuple[list, list]:
    """(layers whose name and weight shapes match the source, [(layer, reason)] for the others)."""
    copied, missed = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        values = source.layers.get(layer.name)
        if values is None:
            missed.append((layer.name, "not in the file"))
        elif len(values) != len(layer.weights) or any(
                tuple(v.shape) != tuple(w.shape) for v, w in zip(values, layer.weights)):
            missed.append((layer.name, "weight shapes differ"))
        else:
            copied.append(layer.name)
    return copied, missed


def differences(here: dict, there: dict | None) -> list[str]:
    """'setting A here, B in the file' for each shape-deciding setting that differs."""
    if not there:
        return []
    return [f"{key} {here[key]} here, {there[key]} in the file" for key in here
            if key in there and there[key] != here[key]]


def transfer(model: keras.Model, source: SourceWeights, here: dict, log=print, what: str = "init weights") -> list:
    """Copy every layer whose name and weight shapes match; raise ConfigError when none does; log one line."""
    copied, missed = match(model, source)
    diff = differences(here, source.settings)
    if not copied:
        detail = f"; settings differ: {', '.join(diff)}" if diff else ""
        raise ConfigError(f"{source.path}: shares no layer (same name and weight shapes) with this model{detail}")
    by_name = {layer.name: layer for layer in model.layers}
    for name in copied:
        layer = by_name[name]
        layer.set_weights([np.asarray(v, dtype=w.dtype) for v, w in zip(source.layers[name], layer.weights)])
    if missed:
        shown = ", ".join(f"{n} ({why})" for n, why in missed[:6])
        rest = f" and {len(missed) - 6} more" if len(missed) > 6 else ""
        left = f"; not copied (left at their initialisation): {shown}{rest}"
    else:
        left = "; every layer copied"
    note = f"; settings differ: {', '.join(diff)}" if diff and missed else ""
    log(f"{what}: copied {len(copied)} of {len(copied) + len(missed)} layers from {source.path}{left}{note}")
    return copied


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
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_FOLDERS)
        found += [Path(root) / name for name in files if images.is_image_file(Path(root) / name)]
    if not found:
        raise DataError(folder, f"no image files ({', '.join(images.IMAGE_SUFFIXES)}, or DICOM) for {flag} "
                                "in this folder or its subfolders")
    return sorted(found)


def _as_16bit_scale(array: np.ndarray) -> np.ndarray:
    """A decoded image as float32 on the 16-bit scale, as training's cached PNG would decode."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) * 257.0
    if array.dtype == np.uint16:
        return array.astype(np.float32)
    finite = np.isfinite(array)  # float TIFF: min..max to 0..65535, as the masks cache does
    if not finite.any():
        return np.zeros(array.shape, np.float32)
    low, high = float(array[finite].min()), float(array[finite].max())
    return np.round((np.where(finite, array, low) - low) / ((high - low) or 1.0) * 65535).astype(np.float32)


def load_image(path, config: Config) -> np.ndarray:
    """One image at network size, (S, S, 1) float32 in [0, 1]: training's decoding, normalisation and letterbox."""
    data = images.read_bytes(path)
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


def blanked_mae(y_true, y_pred):
    """Mean absolute error over the blanked pixels only, per image (the same yardstick for either loss)."""
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    mask = y_true[..., 1:2]
    error = mask * ops.abs(y_pred - y_true[..., :1])
    return ops.sum(error, axis=(1, 2, 3)) / ops.maximum(ops.sum(mask, axis=(1, 2, 3)), 1.0)


def pretrain_model(config: Config) -> keras.Model:
    """The segmentation U-Net's body (identical layer names) with a 1-channel linear reconstruction head."""
    body = model_from_config(config, num_classes=1)
    features = body.get_layer("logits").input
    image = layers.Conv2D(1, 1, dtype="float32", name=HEAD)(features)
    return keras.Model(body.input, image, name="unet_pretrain")


def run_pretraining(config: Config, out, strategy=None, source: SourceWeights | None = None, log=print) -> Path:
    """Pretrain on config.pretrain_data into RUN/pretrain/ (weights, history, config); reuse a finished one."""
    from keras_unet.training import (SafeBackup, StopOnNaN, TrainingError, backup_epoch, read_history,
                                     repair_backup, trim_history)

    folder = Path(out) / PRETRAIN_DIR
    weights_path = folder / WEIGHTS_FILE
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
        schedule = keras.optimizers.schedules.CosineDecay(p.learning_rate, decay_steps=max(1, p.epochs * steps),
                                                          alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=ReconstructionLoss(p.loss, p.outside_weight),
                      metrics=[blanked_mae], jit_compile=config.jit_compile)
    history, backup = folder / HISTORY_FILE, folder / "backup"
    resuming = backup.exists()
    if resuming:
        repair_backup(backup)
        trim_history(history, backup_epoch(backup))
    else:
        history.unlink(missing_ok=True)
    nan_guard = StopOnNaN()
    callbacks = [keras.callbacks.CSVLogger(str(history), append=resuming and history.exists()), nan_guard,
                 SafeBackup(backup)]
    started = time.time()
    model.fit(pretrain_dataset(array, config), epochs=p.epochs, callbacks=callbacks, verbose=2,
              shuffle=False)  # the dataset shuffles itself
    if nan_guard.failed_at is not None:
        raise TrainingError(f"{folder}: the pretraining loss became NaN/infinite (batch {nan_guard.failed_at}); "
                            f"lower pretrain.learning_rate ({p.learning_rate})")
    body = {name: values for name, values in layer_weights(model).items() if name != HEAD}
    config.save(folder / "config.json")
    save_layer_weights(weights_path, body, {k: v for k, v in model_settings(config).items() if k != "classes"})
    shutil.rmtree(backup, ignore_errors=True)
    rows = read_history(history)
    if rows:
        log(f"pretraining: loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, blanked-pixel error "
            f"{rows[0]['blanked_mae']:.4f} -> {rows[-1]['blanked_mae']:.4f} in {time.time() - started:.0f} s; "
            f"weights: {weights_path}")
    return weights_path
