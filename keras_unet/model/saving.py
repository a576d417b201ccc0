"""Model files: the one .keras loader, atomic .keras saving, the float32 rebuild of a mixed-precision model, and
weights by layer name (the pretraining weights file, transfer into a new U-Net)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

try:  # Keras's own saving code, the one way to write a model file into memory
    from keras.src.saving import saving_lib
except ImportError:  # pragma: no cover - another Keras layout
    saving_lib = None
_MEMORY_MODEL = hasattr(saving_lib, "_save_model_to_fileobj")  # save_model accepts an in-memory file
_MEMORY_WEIGHTS = hasattr(saving_lib, "H5IOStore") and hasattr(saving_lib, "_save_state")

from keras_unet import __version__
import keras_unet.model.losses  # noqa: F401  (registers the custom losses and metrics that .keras files name)
from keras_unet.config import Config, load_config
from keras_unet.errors import ConfigError, DataError, KerasUnetError, first_line
from keras_unet.io.files import DiskFullError, atomic_path, free_bytes, write_bytes_atomic
from keras_unet.run_folder import CONFIG_FILE, MODEL_FILE, PRETRAIN_DIR, PRETRAIN_WEIGHTS


def load_model(path, compile: bool = False):
    """A .keras file loaded with safe_mode=True; DataError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model not found")
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a broken or foreign file
        raise DataError(path, f"cannot load the Keras model ({first_line(exc)[:200]})") from None


_FORMAT = "keras_unet.layer_weights/1"


_SHAPE_SETTINGS = ("depth", "base_filters", "batch_norm", "upsampling")


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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_source(path) -> SourceWeights:
    """Weights by layer name from a model.keras, a run folder, or a pretraining body.weights.npz (or its folder)."""
    given = Path(path).expanduser()
    what = f"give a model.keras, a run folder or a pretraining {PRETRAIN_WEIGHTS}"
    if not given.exists():
        raise ConfigError(f"{given}: init weights not found ({what})")
    file = given
    if given.is_dir():
        candidates = (given / MODEL_FILE, given / PRETRAIN_WEIGHTS, given / PRETRAIN_DIR / PRETRAIN_WEIGHTS)
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise ConfigError(f"{given}: folder holds no model.keras or {PRETRAIN_WEIGHTS} to start from ({what})")
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
    return layer_weights(load_model(file))


def _read_npz(file: Path) -> tuple[dict, dict | None]:
    try:
        with np.load(file, allow_pickle=False) as data:
            if "__meta__" not in data.files:
                raise DataError(file, f"not a keras_unet weights file (no __meta__ entry); {PRETRAIN_WEIGHTS} is "
                                      "written by --pretrain")
            meta = json.loads(str(data["__meta__"]))
            weights = {name: [data[f"{name}/{i}"] for i in range(count)] for name, count in meta["layers"].items()}
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(file, f"cannot read the weights file ({first_line(exc)[:200]})") from None
    return weights, meta.get("settings")


def _settings_beside(file: Path) -> dict | None:
    saved = file.parent / CONFIG_FILE
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


def is_mixed(model) -> bool:
    """Whether any layer computes in a dtype other than float32 (a mixed-precision model)."""
    return any(layer.dtype_policy.compute_dtype != "float32" for layer in model.layers)


def float32_model(model):
    """The model itself when it computes in float32, else a float32 copy of its layers with its weights.

    The copy follows the model's own layers, not the U-Net today's code builds from config.json, so a model file
    whose layers differ from that (an earlier version's, a hand-built network) converts too."""
    if not is_mixed(model):
        return model
    structure = model.get_config()
    for layer in structure["layers"]:
        layer["config"]["dtype"] = "float32"
    try:
        rebuilt = keras.Model.from_config(structure)
        rebuilt.set_weights(model.get_weights())
    except ValueError as exc:
        raise ConfigError(f"the model cannot be rebuilt in float32 ({first_line(exc)})") from None
    return rebuilt


def save_for_inference(model: keras.Model, path: Path) -> None:
    """Save the network alone (no loss, metrics or optimizer) as .keras, through a temporary file and a rename.

    The file loads with Keras only; the copy shares the model's layers and weights; what resuming needs stays in
    the run's backup folder."""
    network = keras.Model(model.inputs, model.outputs, name=model.name)
    if _MEMORY_MODEL:
        write_bytes_atomic(path, _in_memory(lambda buffer: saving_lib.save_model(network, buffer)))
        return
    with atomic_path(path, suffix=".keras") as tmp:  # a Keras without in-memory saving
        _check_space(path, _variable_bytes(network))
        network.save(tmp)


def save_weights_file(model: keras.Model, path: Path) -> None:
    """Write the model's weights (and its optimizer's) as a .weights.h5 file, atomically."""
    path = Path(path)

    def fill(buffer):
        store = saving_lib.H5IOStore(buffer, mode="w")
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
        store.close()

    if _MEMORY_WEIGHTS:
        write_bytes_atomic(path, _in_memory(fill))
        return
    with atomic_path(path, suffix=".weights.h5") as tmp:  # a Keras without in-memory saving
        _check_space(path, _variable_bytes(model))
        model.save_weights(str(tmp), overwrite=True)


def _in_memory(fill) -> bytes:
    """The bytes `fill(buffer)` writes into an in-memory file.

    HDF5 can crash the process (SIGSEGV) when the disk fills in the middle of its own write, so model files are
    built in memory and reach the disk in one plain write that fails cleanly (DiskFullError) on a full disk."""
    buffer = io.BytesIO()
    fill(buffer)
    return buffer.getvalue()


def _variable_bytes(model) -> int:
    """What a model's variables (its optimizer's included) take, as a lower bound for a weights file's size."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def _check_space(path: Path, needed: int) -> None:
    """Refuse a write that cannot fit (DiskFullError) before a writer that does not fail cleanly starts it."""
    free = free_bytes(path.parent)
    if free is not None and free < needed + (1 << 20):
        raise DiskFullError(path, needed + (1 << 20), at_least=True)
