"""Load a trained model in any of its forms (a run's model.keras, a SavedModel folder, a .tflite or an .onnx file)
as a Predictor, with the run settings read from the config.json or metadata.json that travels with it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from keras_unet.config import Config, config_from_dict, load_config
from keras_unet.errors import ConfigError, DataError, first_line
from keras_unet.infer.predictor import Predictor, RefinedPredictor
from keras_unet.infer.runtimes import OnnxModel, TFLiteModel, keras_network, saved_model_network
from keras_unet.run_folder import CONFIG_FILE, METADATA_FILE, MODEL_FILE, REFINE_DIR


def read_metadata(path) -> tuple[dict, Config]:
    """An export's metadata.json (the file, or the model file beside it) and the run Config it holds."""
    path = Path(path)
    if path.name != METADATA_FILE:
        path = path.parent / METADATA_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; keep the export's metadata.json beside the model") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read metadata ({first_line(exc)})") from None
    if not isinstance(values, dict) or not isinstance(values.get("config"), dict):
        raise ConfigError(f"{path}: metadata has no \"config\" mapping of run settings")
    return values, _checked(config_from_dict(values["config"], f"{path}: config"), path)


def _checked(config: Config, where) -> Config:
    """The config validated, refusing one that names no classes (the model's outputs would have no names)."""
    if not config.classes:
        raise ConfigError(f"{where}: lists no classes; cannot name the model's outputs")
    return config.validate()


def _keras_network(path: Path, config: Config):
    """A .keras model as a network, rebuilt in float32 where there is no GPU (float16 layers are slow on CPUs)."""
    import tensorflow as tf

    from keras_unet.model.saving import float32_model, load_model

    model = load_model(path)
    if not tf.config.list_physical_devices("GPU"):
        model = float32_model(model, config)
    return keras_network(model)


def load_predictor(path, refine: bool = True) -> Predictor:
    """A Predictor for a model.keras (or its run folder), a SavedModel folder, a .tflite or an .onnx file.

    A model.keras whose run trained a refine stage comes with it (refine=False leaves it out)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "model not found")
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise DataError(path, f"folder holds neither {MODEL_FILE} nor a SavedModel (saved_model.pb)")
        config = read_settings([path / METADATA_FILE, path.parent / METADATA_FILE,
                                path / CONFIG_FILE, path.parent / CONFIG_FILE], path)
        return Predictor(saved_model_network(path), config, path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        config = read_settings([path.parent / CONFIG_FILE, path.parent / METADATA_FILE], path)
        predictor = Predictor(_keras_network(path, config), config, path)
        return _with_refine_stage(predictor, path.parent / REFINE_DIR) if refine and config.refine.enabled else predictor
    if suffix == ".tflite":
        config = read_settings([path.parent / METADATA_FILE], path)
        return Predictor(TFLiteModel(str(path)).predict, config, path)
    if suffix == ".onnx":
        config = read_settings([path.parent / METADATA_FILE], path)
        return Predictor(OnnxModel(str(path)).predict, config, path)
    raise DataError(path, "not a model: expected model.keras, a SavedModel folder, a .tflite or an .onnx file")


def _with_refine_stage(predictor: Predictor, folder: Path) -> Predictor:
    """The predictor with its run's refine stage, or alone (and a warning) when that stage never finished."""
    if not (folder / MODEL_FILE).is_file():
        print(f"warning: {folder}: the refine stage has no {MODEL_FILE} (training unfinished?); "
              "using the first stage alone", file=sys.stderr)
        return predictor
    return RefinedPredictor(predictor, load_predictor(folder, refine=False))


def read_settings(candidates, model_path) -> Config:
    """The run Config from the first settings file that exists (config.json, or metadata.json's "config")."""
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if candidate.name == METADATA_FILE:
            return read_metadata(candidate)[1]
        return _checked(load_config(candidate), candidate)
    names = ", ".join(sorted({str(c) for c in candidates}))
    raise ConfigError(f"{model_path}: no run settings found (looked for {names})")
