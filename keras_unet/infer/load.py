"""Load a trained model in any of its forms (a run's model.keras, a SavedModel folder, a .tflite or an .onnx file, an
export folder) as a Predictor, with the run settings read from the config.json or metadata.json that travels with it.

A run with a refine stage loads as the chain (`predictor.RefinedPredictor`): from a run folder, its refine/ run; from
an export, the refine model of the same format that the metadata names (refine/model*.tflite, ...)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from keras_unet.config import Config, config_from_dict, load_config
from keras_unet.errors import ConfigError, DataError, first_line
from keras_unet.infer.predictor import Predictor, RefinedPredictor
from keras_unet.infer.runtimes import OnnxModel, TFLiteModel, keras_network, saved_model_network
from keras_unet.run_folder import CONFIG_FILE, METADATA_FILE, MODEL_FILE, REFINE_DIR

# what an export folder given as --model runs: the first of these artefacts that is there and passed its parity gate
EXPORT_PREFERENCE = ("tflite", "onnx", "tflite_fp16", "tflite_int8_mixed", "onnx_int8", "tflite_int8", "saved_model")


def read_metadata(path) -> tuple[dict, Config]:
    """An export's metadata.json (the file, or the model file beside it) and the run Config it holds."""
    path = Path(path)
    if path.name != METADATA_FILE:
        path = path.parent / METADATA_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; keep the export's metadata.json beside the model") from None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
        raise ConfigError(f"{path}: cannot read metadata ({first_line(exc)})") from None
    if not isinstance(values, dict) or not isinstance(values.get("config"), dict):
        raise ConfigError(f"{path}: metadata has no \"config\" mapping of run settings")
    return values, _checked(config_from_dict(values["config"], f"{path}: config"), path)


def refine_config(values: dict, where) -> Config | None:
    """The refine stage's Config from metadata values (its "refine" section), or None for a single-stage export."""
    section = values.get("refine")
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("config"), dict):
        raise ConfigError(f"{where}: metadata's \"refine\" section has no \"config\" mapping")
    return _checked(config_from_dict(section["config"], f"{where}: refine.config"), where)


def _checked(config: Config, where) -> Config:
    """The config validated, refusing one that names no classes (the model's outputs would have no names)."""
    if not config.classes:
        raise ConfigError(f"{where}: lists no classes; cannot name the model's outputs")
    return config.validate()


def _keras_network(path: Path):
    """A .keras model as a network, rebuilt in float32 where there is no GPU (float16 layers are slow on CPUs)."""
    import tensorflow as tf

    from keras_unet.model.saving import float32_model, load_model

    model = load_model(path)
    if not tf.config.list_physical_devices("GPU"):
        model = float32_model(model)
    return keras_network(model)


def load_predictor(path, refine: bool = True, threads: int | None = None) -> Predictor:
    """A Predictor for a model.keras (or its run folder), a SavedModel folder, a .tflite or an .onnx file, or an
    export folder (its preferred artefact, EXPORT_PREFERENCE).

    A model whose run trained a refine stage comes with it (refine=False leaves it out). threads: CPU threads of the
    LiteRT and ONNX Runtime networks (None: every core this process may use)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "model not found")
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    if path.is_dir() and not (path / "saved_model.pb").is_file() and (path / METADATA_FILE).is_file():
        path = preferred_artifact(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise DataError(path, f"folder holds neither {MODEL_FILE}, a SavedModel (saved_model.pb) nor an "
                                  f"export's {METADATA_FILE}")
        for candidate in (path / METADATA_FILE, path.parent / METADATA_FILE):
            if candidate.is_file():
                return load_exported(path, refine, threads, candidate)
        config = read_settings([path / CONFIG_FILE, path.parent / CONFIG_FILE], path)
        return Predictor(saved_model_network(path), config, path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        config = read_settings([path.parent / CONFIG_FILE, path.parent / METADATA_FILE], path)
        predictor = Predictor(_keras_network(path), config, path)
        return _with_refine_stage(predictor, path.parent / REFINE_DIR) if refine and config.refine.enabled else predictor
    if suffix in (".tflite", ".onnx"):
        return load_exported(path, refine, threads)
    raise DataError(path, "not a model: expected model.keras, a SavedModel folder, a .tflite or an .onnx file")


def network(path: Path, threads: int | None = None):
    """The network of one exported artefact: LiteRT for .tflite, ONNX Runtime for .onnx, else a SavedModel."""
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return TFLiteModel(path, threads).predict
    if suffix == ".onnx":
        return OnnxModel(path, threads).predict
    return saved_model_network(path)


def load_exported(path, refine: bool = True, threads: int | None = None, metadata=None) -> Predictor:
    """An exported artefact as a Predictor with its metadata's settings; as the chain when the export holds the
    refine stage's model of the same format (refine=False: the first stage alone)."""
    path = Path(path)
    metadata = Path(metadata) if metadata else path.parent / METADATA_FILE
    values, config = read_metadata(metadata)
    fine = refine_config(values, metadata) if refine else None
    if fine is None:
        return Predictor(network(path, threads), config, path)
    fine_file = _entry(values, path, metadata.parent).get("refine", {}).get("file")
    if not fine_file or not (metadata.parent / fine_file).exists():
        raise ConfigError(f"{metadata}: names no refine-stage model for {path.name}"
                          + (f" (the file {fine_file} is missing)" if fine_file else "")
                          + "; export again, or load the first stage alone (refine=False, --no-refine)")
    fine_path = metadata.parent / fine_file
    return RefinedPredictor(Predictor(network(path, threads), config, path),
                            Predictor(network(fine_path, threads), fine, fine_path))


def _entry(values: dict, path: Path, folder: Path) -> dict:
    """The metadata's artefact entry whose file is path."""
    artifacts = values.get("artifacts") if isinstance(values.get("artifacts"), dict) else {}
    for entry in artifacts.values():
        if isinstance(entry, dict) and (folder / str(entry.get("file", ""))).resolve() == path.resolve():
            return entry
    return {}


def preferred_artifact(folder: Path) -> Path:
    """The export folder's artefact to run: the first of EXPORT_PREFERENCE written there that passed parity."""
    values, _ = read_metadata(folder / METADATA_FILE)
    artifacts = values.get("artifacts") if isinstance(values.get("artifacts"), dict) else {}
    for fmt in EXPORT_PREFERENCE:
        entry = artifacts.get(fmt)
        if isinstance(entry, dict) and entry.get("parity_passed", True) and (folder / entry.get("file", "")).exists():
            if fmt.startswith("onnx") and not _has("onnxruntime") or fmt.startswith("tflite") and not _has("ai_edge_litert"):
                continue
            return folder / entry["file"]
    raise DataError(folder, f"export folder holds no artefact that passed its parity gate ({METADATA_FILE})")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


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
