"""Export a trained run to SavedModel, TFLite (float32, float16 weights, int8) and ONNX, each checked against Keras.

Every artefact goes into one output folder with a `metadata.json` holding the run's Config and how to feed the
network: NHWC float32 (N, S, S, 1) in [0, 1] made by `keras_unet.preprocess.prepare`, sigmoid probabilities
(N, S, S, C) out; the int8 TFLite model takes and returns uint8 (scale and zero point in the metadata). The folder
is built beside its final place and renamed into it, so a failed export leaves nothing half-written.

Parity: each artefact runs on validation images through the same numpy preprocessing as the Keras model; the
figures are the largest absolute probability difference and, per class, the Dice between the two masks
thresholded at 0.5 (pooled over the images; the worst class is the one gated).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_unet import __version__, images
from keras_unet.config import Config, load_config
from keras_unet.errors import ConfigError, DataError, KerasUnetError, first_line
from keras_unet.preprocess import prepare

FORMATS = ("saved_model", "tflite", "tflite_fp16", "tflite_int8", "onnx")
FILES = {"saved_model": "saved_model", "tflite": "model.tflite", "tflite_fp16": "model_fp16.tflite",
         "tflite_int8": "model_int8.tflite", "onnx": "model.onnx"}
PRECISION = {"saved_model": "float32", "tflite": "float32", "tflite_fp16": "float16 weights, float32 compute",
             "tflite_int8": "int8 (full integer, uint8 input and output)", "onnx": "float32"}
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
INPUT_NAME = "image"
ONNX_OUTPUT = "probabilities"
ONNX_OPSET = 17
PARITY_THRESHOLD = 0.5
LATENCY_RUNS = 5
CHUNK = 8  # images per network call while measuring parity


class ExportError(KerasUnetError):
    """An artefact could not be converted or written."""


@dataclass
class ExportOptions:
    """What to export and how strictly to check it."""

    formats: tuple = FORMATS
    calibration: str | None = None  # folder of images for int8 calibration (and parity when the data is absent)
    calibration_images: int = 200
    parity_images: int = 50
    int8_dice: float = 0.98
    float_dice: float = 0.999
    overwrite: bool = False

    def validate(self) -> "ExportOptions":
        """Raise ConfigError on the first option that cannot work."""
        unknown = [f for f in self.formats if f not in FORMATS]
        checks = [
            (bool(self.formats), "--formats names no format"),
            (not unknown, f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}"),
            (self.calibration_images >= 1, f"--calibration-images must be at least 1, got {self.calibration_images}"),
            (self.parity_images >= 1, f"--parity-images must be at least 1, got {self.parity_images}"),
            (0.0 <= self.int8_dice <= 1.0, f"--int8-dice must be between 0 and 1, got {self.int8_dice}"),
            (0.0 <= self.float_dice <= 1.0, f"--float-dice must be between 0 and 1, got {self.float_dice}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def parse_formats(text: str | None) -> tuple:
    """Format names from 'tflite,onnx' (None or empty: all), in the canonical order."""
    if not text:
        return FORMATS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def check_packages(formats) -> None:
    """Raise ConfigError, before any work, when a chosen format needs a package that is not installed."""
    import importlib.util

    needs = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "tflite": ("ai_edge_litert",)}
    pip_names = {"ai_edge_litert": "ai-edge-litert"}
    for fmt in formats:
        missing = [m for m in needs.get(fmt.split("_")[0], ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"format {fmt} needs {', '.join(missing)}: "
                              f"pip install {' '.join(pip_names.get(m, m) for m in missing)}")


# -- the model ----------------------------------------------------------------------------------------


def load_run(model_path) -> tuple:
    """(Keras model, Config) of a run's model.keras and the config.json beside it."""
    model_path = Path(model_path).expanduser()
    if model_path.is_dir():
        model_path = model_path / "model.keras"
    if not model_path.is_file():
        raise DataError(model_path, "model not found")
    config = load_config(model_path.parent / CONFIG_FILE)
    if not config.classes:
        raise ConfigError(f"{model_path.parent / CONFIG_FILE}: lists no classes")
    config.validate()
    import keras

    import keras_unet.losses  # noqa: F401  (registers the custom losses and metrics for loading)

    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a broken or foreign file
        raise DataError(model_path, f"cannot load the Keras model ({first_line(exc)})") from None
    return model, config


def is_mixed(model) -> bool:
    """Whether any layer computes in a dtype other than float32 (a mixed-precision model)."""
    return any(layer.dtype_policy.compute_dtype != "float32" for layer in model.layers)


def float32_model(model, config: Config):
    """The model itself when it computes in float32, else a float32 rebuild from the config with its weights."""
    if not is_mixed(model):
        return model
    import keras

    from keras_unet.model import model_from_config

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        rebuilt = model_from_config(config)
        rebuilt.set_weights(model.get_weights())
    except ValueError as exc:
        raise ConfigError(f"the model does not match its config.json ({first_line(exc)})") from None
    finally:
        keras.config.set_dtype_policy(previous)
    return rebuilt


def check_shapes(model, config: Config) -> None:
    """Raise ConfigError when the model's input or output does not fit the config."""
    channels_in, channels_out = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
    if channels_in != 1 or channels_out != len(config.classes):
        raise ConfigError(f"the model maps {channels_in} channel(s) to {channels_out}, but the config expects "
                          f"1 to {len(config.classes)} ({', '.join(config.classes)})")


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- calibration and parity images --------------------------------------------------------------------


def split_stems(run_dir: Path) -> set:
    """Stems of the validation images named by the run's split.json (empty without one)."""
    split = run_dir / SPLIT_FILE
    if not split.is_file():
        return set()
    try:
        return set(json.loads(split.read_text()).get("val", []))
    except (OSError, ValueError, AttributeError, TypeError):
        raise DataError(split, "not a valid split file") from None


def run_images(run_dir: Path, config: Config) -> tuple[list, list]:
    """(training, validation) image paths of the run's data: validation as split.json names it, else as trained."""
    from keras_unet.training import load_samples

    train, val = load_samples(config, log=None)
    stems = split_stems(run_dir)
    named = [s for s in [*train, *val] if s.stem in stems]
    if named:
        train, val = [s for s in [*train, *val] if s.stem not in stems], named
    return [s.image_path for s in train], [s.image_path for s in val]


def folder_images(folder, config: Config) -> list:
    """A folder's images: those of its samples when it is a Labelme or image + masks/ folder, else its image files."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(folder, "folder not found" if not folder.exists() else "not a folder")
    from keras_unet.masks import prepare_samples

    try:
        return [s.image_path for s in prepare_samples(folder, config.classes, cache_dir=config.cache_dir or None,
                                                      line_width=config.line_width, log=None)]
    except DataError:
        pass
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in images.IMAGE_SUFFIXES and not p.name.startswith("."))
    if not found:
        raise DataError(folder, f"no image files ({', '.join(images.IMAGE_SUFFIXES)})")
    return found


def spread(paths: list, n: int) -> list:
    """At most n items, evenly spaced over the list (all of them when it is short)."""
    if len(paths) <= n:
        return list(paths)
    return [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, n).round().astype(int))]


def select_images(run_dir: Path, config: Config, options: ExportOptions, log=print) -> tuple[list, list]:
    """(calibration, parity) image paths: the run's training/validation data, or --calibration's images."""
    try:
        train, val = run_images(run_dir, config)
    except KerasUnetError as exc:
        if not options.calibration:
            raise ConfigError(f"cannot read the run's data ({exc}); give --calibration with a folder of images") \
                from None
        log(f"note: the run's data is not readable ({exc}); using {options.calibration} for parity too")
        train = val = None
    calibration = folder_images(options.calibration, config) if options.calibration else (train or val)
    parity = val or calibration
    return spread(calibration, options.calibration_images), spread(parity, options.parity_images)


def prepared(path, config: Config) -> np.ndarray:
    """One image file as a (S, S, 1) float32 network input (keras_unet.preprocess.prepare)."""
    return prepare(images.read_image(path), config)[0].astype(np.float32)


def load_batch(paths, config: Config) -> np.ndarray:
    """Image files as a prepared (N, S, S, 1) float32 batch."""
    return np.stack([prepared(p, config) for p in paths])


# -- writing the artefacts ----------------------------------------------------------------------------


def write_saved_model(model, path: Path, size: int) -> None:
    """A SavedModel whose `serve` endpoint takes `image`: float32 (None, S, S, 1)."""
    import keras

    spec = keras.InputSpec(shape=(None, size, size, 1), dtype="float32", name=INPUT_NAME)
    try:
        model.export(str(path), format="tf_saved_model", input_signature=[spec], verbose=False)
    except Exception as exc:  # TensorFlow raises many types
        raise ExportError(f"saved_model: export failed ({first_line(exc)})") from exc


def convert_tflite(saved_model: Path, mode: str, calibration=None) -> bytes:
    """TFLite flatbuffer from a SavedModel: float32, float16 weights, or full-integer int8 (uint8 in and out)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode == "tflite_fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "tflite_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def calibration_data(paths, config: Config):
    """Representative-dataset callable: each calibration image as a prepared [(1, S, S, 1)] list, read lazily."""
    def generate():
        for path in paths:
            yield [prepared(path, config)[None]]

    return generate


def convert_onnx(model, size: int, opset: int = ONNX_OPSET):
    """ONNX ModelProto via tf2onnx: input `image` (batch, S, S, 1), output `probabilities`, dynamic batch."""
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise ExportError("onnx: tf2onnx is not installed (pip install tf2onnx onnx onnxruntime)") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = [tf.TensorSpec((None, size, size, 1), tf.float32, name=INPUT_NAME)]
    forward = tf.function(lambda image: model(image, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
    return name_onnx_io(proto, ONNX_OUTPUT, "batch")


def name_onnx_io(proto, output_name: str, batch_name: str):
    """Rename the ONNX graph's output and its inputs' and outputs' first (batch) dimension."""
    graph = proto.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [output_name if name == old else name for name in node.output]
        node.input[:] = [output_name if name == old else name for name in node.input]
    graph.output[0].name = output_name
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = batch_name
    return proto


def write_artifact(fmt: str, model, folder: Path, saved_model: Path, config: Config, calibration) -> Path:
    """Write one artefact into folder and return its path."""
    path = folder / FILES[fmt]
    try:
        if fmt == "saved_model":
            pass  # written first, as the TFLite converters read it
        elif fmt.startswith("tflite"):
            data = convert_tflite(saved_model, fmt, calibration_data(calibration, config))
            path.write_bytes(data)
        else:
            import onnx

            proto = convert_onnx(model, config.image_size)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(path))
    except KerasUnetError:
        raise
    except Exception as exc:  # converters raise many types
        raise ExportError(f"{fmt}: conversion failed ({first_line(exc)})") from exc
    return path


# -- running the artefacts ----------------------------------------------------------------------------


def saved_model_predict(path: Path):
    """Batch -> probabilities through a SavedModel's `serve` endpoint."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept alive by the closure: the endpoint needs its variables
    return lambda batch: np.asarray(loaded.serve(tf.constant(batch, dtype=tf.float32)), dtype=np.float32)


def keras_predict(model):
    """Batch -> probabilities through a traced call of a Keras model."""
    import tensorflow as tf

    size = model.inputs[0].shape[1]
    signature = [tf.TensorSpec((None, size, size, 1), tf.float32)]
    forward = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), input_signature=signature)
    return lambda batch: forward(tf.constant(batch, dtype=tf.float32)).numpy()


def runner(fmt: str, path: Path):
    """(predict, tensor details) for a written artefact."""
    if fmt == "saved_model":
        return saved_model_predict(path), {"signature": "serve (also serving_default)", "input": INPUT_NAME,
                                           "output": "output_0"}
    if fmt == "onnx":
        from keras_unet.onnx_model import OnnxModel

        model = OnnxModel(path)
        return model.predict, {"input": model.input_name, "output": model.output_name, "opset": ONNX_OPSET,
                               "dynamic_axes": {"input": [0], "output": [0]}}
    from keras_unet.edge import TFLiteModel

    model = TFLiteModel(path)
    return model.predict, {"signature": "serving_default", "input": _tensor(model.input),
                           "output": _tensor(model.output)}


def _tensor(detail: dict) -> dict:
    dtype = np.dtype(detail["dtype"]).name
    info = {"name": detail["name"], "dtype": dtype, "shape": [int(v) for v in detail["shape_signature"]]}
    if dtype in ("uint8", "int8"):
        scale, zero_point = detail["quantization"]
        info.update(scale=float(scale), zero_point=int(zero_point),
                    real_value="(q - zero_point) * scale")
    return info


def predict_all(predict, batch: np.ndarray) -> np.ndarray:
    """Probabilities for a whole batch, CHUNK images per call."""
    return np.concatenate([np.asarray(predict(batch[i:i + CHUNK]), dtype=np.float32)
                           for i in range(0, len(batch), CHUNK)])


def latency_ms(predict, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds of one single-image call, after a warm-up call."""
    x = image[None]
    predict(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def compare(reference: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Max absolute difference and per-class Dice of the masks thresholded at 0.5 (worst class as `dice`)."""
    if probs.shape != reference.shape:
        raise ExportError(f"the artefact returned shape {probs.shape}, the Keras model {reference.shape}")
    ref, out = reference > PARITY_THRESHOLD, probs > PARITY_THRESHOLD
    per_class = {name: dice(ref[..., c], out[..., c]) for c, name in enumerate(classes)}
    return {"dice": min(per_class.values()), "dice_per_class": per_class,
            "max_abs_diff": float(np.max(np.abs(probs - reference))),
            "mean_abs_diff": float(np.mean(np.abs(probs - reference)))}


# -- the output folder --------------------------------------------------------------------------------


def check_out_dir(out: Path, overwrite: bool, model_path: Path) -> None:
    """Refuse an output folder that exists (unless overwrite), is a file, or holds the source model."""
    out_real, model_real = os.path.realpath(out), os.path.realpath(model_path)
    if model_real == out_real or model_real.startswith(out_real.rstrip(os.sep) + os.sep):
        raise ConfigError(f"{out}: holds the source model {model_path}; export somewhere else")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: export folder already exists; use another --out, or --overwrite to replace it")


def commit(tmp: Path, out: Path) -> None:
    """Put the finished folder at out, replacing an old one only once the new one is complete."""
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old") if out.exists() else None
    if old:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old:
            os.replace(old, out)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def folder_bytes(path: Path) -> int:
    """Size of a file, or of all files under a folder, in bytes."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the export ---------------------------------------------------------------------------------------


def export_run(model_path, out, options: ExportOptions | None = None, log=print) -> dict:
    """Export a run's model.keras to out/ in the chosen formats, check each against Keras; returns the metadata."""
    options = (options or ExportOptions()).validate()
    log = log or (lambda line: None)
    model_path, out = Path(model_path).expanduser(), Path(out).expanduser()
    if model_path.is_dir():
        model_path = model_path / "model.keras"
    check_out_dir(out, options.overwrite, model_path)
    check_packages(options.formats)
    source, config = load_run(model_path)
    if config.refine.enabled:
        log("note: this run has a refine stage (refine/); only the first, whole-image model is exported, so the "
            "artefacts give its masks, without the refinement")
    model = float32_model(source, config)
    check_shapes(model, config)
    calibration, parity = select_images(model_path.parent, config, options, log)
    log(f"exporting {model_path} ({', '.join(options.formats)}); parity on {len(parity)} image(s)"
        + (f", int8 calibration on {len(calibration)}" if "tflite_int8" in options.formats else ""))
    batch = load_batch(parity, config)
    metadata, reference = reference_run(model, source, model_path, config, options, batch, log)

    def fill(folder: Path) -> None:
        write_artifacts(folder, model, config, calibration, batch, reference, options, metadata, log)

    build_atomically(out, fill, options.overwrite, model_path)
    return metadata


def reference_run(model, source, model_path: Path, config: Config, options: ExportOptions, batch, log):
    """(metadata so far, Keras probabilities on the parity batch) from the float32 model."""
    keras_run = keras_predict(model)
    reference = predict_all(keras_run, batch)
    metadata = base_metadata(model_path, config, options, len(batch))
    metadata["keras"] = {"file": model_path.name, "bytes": model_path.stat().st_size,
                         "latency_ms": latency_ms(keras_run, batch[0])}
    if model is not source:
        rebuild = compare(predict_all(keras_predict(source), batch), reference, config.classes)
        metadata["float32_rebuild"] = rebuild
        log(f"mixed-precision model rebuilt in float32 (Dice vs the original {rebuild['dice']:.4f})")
    return metadata, reference


def write_artifacts(folder: Path, model, config, calibration, batch, reference, options, metadata, log) -> None:
    """Every chosen artefact, checked, and metadata.json, into folder."""
    keep = "saved_model" in options.formats
    saved_model = folder / (FILES["saved_model"] if keep else ".saved_model_source")
    if keep or any(f.startswith("tflite") for f in options.formats):
        write_saved_model(model, saved_model, config.image_size)  # what the TFLite converters read
    for fmt in options.formats:
        metadata["artifacts"][fmt] = export_one(fmt, model, folder, saved_model, config, calibration, batch,
                                                reference, options, log)
    if not keep:
        shutil.rmtree(saved_model, ignore_errors=True)
    metadata["parity_passed"] = all(a["parity_passed"] for a in metadata["artifacts"].values())
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def build_atomically(out: Path, fill, overwrite: bool, model_path: Path) -> None:
    """fill(a temporary folder beside out), then rename it to out; on any failure nothing is left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fill(tmp)
        check_out_dir(out, overwrite, model_path)
        commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_one(fmt, model, folder, saved_model, config, calibration, batch, reference, options, log) -> dict:
    """Write one artefact, run it on the parity batch, and describe it for the metadata."""
    path = write_artifact(fmt, model, folder, saved_model, config, calibration)
    predict, tensors = runner(fmt, path)
    figures = compare(reference, predict_all(predict, batch), config.classes)
    figures["latency_ms"] = latency_ms(predict, batch[0])
    figures["min_dice"] = options.int8_dice if fmt == "tflite_int8" else options.float_dice
    passed = figures["dice"] >= figures["min_dice"]
    entry = {"file": FILES[fmt], "bytes": folder_bytes(path), "precision": PRECISION[fmt], **tensors,
             "parity": figures, "parity_passed": passed}
    if path.is_file():
        entry["sha256"] = sha256_file(path)
    log(f"{fmt}: {FILES[fmt]} {human_bytes(entry['bytes'])}, Dice {figures['dice']:.4f}, "
        f"max diff {figures['max_abs_diff']:.2e}" + ("" if passed else "  PARITY FAILED"))
    return entry


def base_metadata(model_path: Path, config: Config, options: ExportOptions, parity_count: int) -> dict:
    """Everything the metadata says before the artefacts are written."""
    settings = config.to_dict()
    post = config.postprocess
    size = config.image_size
    return {
        "format_version": 1,
        "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_model": str(model_path),
        "source_model_sha256": sha256_file(model_path),
        "config": settings,
        "classes": list(config.classes),
        "image_size": size,
        "channels": 1,
        "input": {"name": INPUT_NAME, "shape": [None, size, size, 1], "layout": "NHWC", "dtype": "float32",
                  "range": [0.0, 1.0], "note": "the int8 TFLite model takes uint8: see its input scale/zero_point"},
        "output": {"shape": [None, size, size, len(config.classes)], "layout": "NHWC", "dtype": "float32",
                   "activation": "sigmoid", "channels": list(config.classes)},
        "preprocessing": {"function": "keras_unet.preprocess.prepare", "normalization": settings["normalization"],
                          "letterbox": "keep the aspect ratio (area resize when shrinking, bilinear when "
                                       "enlarging), centre, zero-pad to image_size x image_size",
                          "unletterbox": "keras_unet.preprocess.unletterbox"},
        "postprocessing": {"function": "keras_unet.postprocess.clean_masks", **settings["postprocess"]},
        "thresholds": {name: float(post.thresholds.get(name, post.threshold)) for name in config.classes},
        "parity": {"reference": "the float32 Keras model", "images": parity_count,
                   "mask_threshold": PARITY_THRESHOLD, "float_min_dice": options.float_dice,
                   "int8_min_dice": options.int8_dice},
        "artifacts": {},
    }


# -- reporting ----------------------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """'812 B', '35.2 KiB', '7.41 MiB'."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 ** 2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 ** 2:.2f} MiB"


def format_table(metadata: dict) -> str:
    """A text table: format, file, size, Dice vs Keras, max difference, latency per image, parity."""
    rows = [("format", "file", "size", "Dice vs Keras", "max diff", "ms/image", "parity")]
    keras_row = metadata.get("keras")
    if keras_row:
        rows.append(("keras", keras_row["file"], human_bytes(keras_row["bytes"]), "(reference)", "-",
                     f"{keras_row['latency_ms']:.1f}", "-"))
    for fmt, a in metadata["artifacts"].items():
        p = a["parity"]
        rows.append((fmt, a["file"], human_bytes(a["bytes"]), f"{p['dice']:.4f}", f"{p['max_abs_diff']:.2e}",
                     f"{p['latency_ms']:.1f}", "ok" if a["parity_passed"] else f"FAILED (< {p['min_dice']})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def parity_failures(metadata: dict) -> list[str]:
    """One line per artefact that failed its parity gate."""
    lines = []
    for fmt, a in metadata["artifacts"].items():
        if not a["parity_passed"]:
            p = a["parity"]
            per_class = ", ".join(f"{c} {v:.4f}" for c, v in p["dice_per_class"].items())
            lines.append(f"{fmt} ({a['file']}): Dice {p['dice']:.4f} < {p['min_dice']} ({per_class}); "
                         f"max probability difference {p['max_abs_diff']:.3f}")
    return lines


