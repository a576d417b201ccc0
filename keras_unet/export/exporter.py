"""Export a trained run to SavedModel, TFLite (float32, float16 weights, int8) and ONNX, each checked against Keras.

Every artefact goes into one output folder with a `metadata.json` holding the run's Config and how to feed the
network: NHWC float32 (N, S, S, 1) in [0, 1] made by `keras_unet.imaging.preprocess.prepare`, sigmoid probabilities
(N, S, S, C) out; the int8 TFLite model takes and returns uint8 (scale and zero point in the metadata). The folder
is built beside its final place and renamed into it, so a failed export leaves nothing half-written.

Parity: each artefact runs on validation images through the same numpy preprocessing as the Keras model; the
figures are the largest absolute probability difference and, per class, the Dice between the two masks
thresholded at 0.5 (pooled over the images; the worst class is the one gated).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np

from keras_unet import __version__
from keras_unet.config import Config
from keras_unet.data.samples import load_samples, prepare_samples
from keras_unet.errors import ConfigError, DataError, KerasUnetError
from keras_unet.export import chain
from keras_unet.export.convert import FILES, INPUT_NAME, write_artifact, write_saved_model
from keras_unet.export.options import INT8_FORMATS, ExportOptions
from keras_unet.export.parity import PARITY_THRESHOLD, compare, latency_ms, load_batch, predict_all, runner
from keras_unet.infer.load import read_settings
from keras_unet.infer.predictor import Predictor, RefinedPredictor
from keras_unet.infer.runtimes import keras_network
from keras_unet.io import images, labelme
from keras_unet.io.files import build_folder, check_out_dir, folder_bytes, human_bytes, sha256_file
from keras_unet.model.saving import float32_model, load_model
from keras_unet.progress import Progress
from keras_unet.run_folder import CONFIG_FILE, METADATA_FILE, MODEL_CARD, MODEL_FILE, REFINE_DIR, SPLIT_FILE

PRECISION = {"saved_model": "float32", "tflite": "float32", "tflite_fp16": "float16 weights (the stem as two float16 parts), float32 compute",
             "tflite_int8": "int8 (full integer: int8 weights per channel, int8 activations, uint8 input and output)",
             "onnx": "float32",
             "onnx_int8": "int8 (ONNX Runtime static QDQ: int8 weights per channel at 7 bits, uint8 activations) "
                          "but the stem and head convolutions in float32",
             "tflite_int16x8": "int16 activations, int8 weights (float input and output)",
             "tflite_dynamic": "dynamic range (int8 weights, float activations)",
             "tflite_int8_mixed": "int8 but the stem (first convolution) and the output head (logits convolution, "
                                  "sigmoid) in float32; float input and output"}


def check_packages(formats) -> None:
    """Raise ConfigError, before any work, when a chosen format needs a package that is not installed."""
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
        model_path = model_path / MODEL_FILE
    if not model_path.is_file():
        raise DataError(model_path, "model not found")
    config = read_settings([model_path.parent / CONFIG_FILE], model_path)
    return load_model(model_path), config


def check_shapes(model, config: Config) -> None:
    """Raise ConfigError when the model's input or output does not fit the config."""
    channels_in, channels_out = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
    outputs = config.outputs()
    if channels_in != 1 or channels_out != len(outputs):
        raise ConfigError(f"the model maps {channels_in} channel(s) to {channels_out}, but the config expects "
                          f"1 to {len(outputs)} ({', '.join(outputs)})")


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
    train, val = load_samples(config, log=None)
    stems = split_stems(run_dir)
    named = [s for s in [*train, *val] if s.stem in stems]
    if named:
        train, val = [s for s in [*train, *val] if s.stem not in stems], named
    return [s.image_path for s in train], [s.image_path for s in val]


def folder_images(folder, config: Config) -> list:
    """A folder's images: those of its samples when it holds Labelme JSON files or a masks/ folder, else its image
    files. A sample folder's problems raise (DataError naming the first unusable file), never fall back to listing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(folder, "folder not found" if not folder.exists() else "not a folder")
    if not labelme.walk_json(folder) and not (folder / "masks").is_dir():
        return images.list_images(folder)
    bad: list = []
    try:
        samples = prepare_samples(folder, config.classes, cache_dir=config.cache_dir or None,
                                  line_width=config.line_width, log=None, skip_bad=True, bad=bad)
    except DataError:
        if not bad:
            raise
    if bad:
        path, problem = bad[0]
        more = f"; {len(bad) - 1} more unusable annotation file(s) in {folder}" if len(bad) > 1 else ""
        raise DataError(path, f"{problem} (in the calibration folder{more})")
    return [s.image_path for s in samples]


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


# -- the export ---------------------------------------------------------------------------------------


def export_run(model_path, out, options: ExportOptions | None = None, log=print) -> dict:
    """Export a run's model.keras (and its refine stage) to out/ in the chosen formats, check each against Keras;
    returns the metadata."""
    options = (options or ExportOptions()).validate()
    log = log or (lambda line: None)
    model_path, out = Path(model_path).expanduser(), Path(out).expanduser()
    if model_path.is_dir():
        model_path = model_path / MODEL_FILE
    check_out_dir(out, options.overwrite, "export folder", keep=model_path)
    check_packages(options.formats)
    source, config = load_run(model_path)
    model = float32_model(source)
    check_shapes(model, config)
    fine = refine_model(model_path.parent, config, options, log)
    calibration, parity = select_images(model_path.parent, config, options, log)
    log(f"exporting {model_path}{' and its refine stage' if fine else ''} ({', '.join(options.formats)}); parity on "
        f"{len(parity)} image(s)" + (f", int8 calibration on {len(calibration)}"
                                     if set(INT8_FORMATS) & set(options.formats) else ""))
    batch = load_batch(parity, config)
    metadata, reference = reference_run(model, source, model_path, config, options, batch, log)
    stages = [chain.Stage("first", "", model, config, calibration, batch, reference)]
    keras_chain = None  # (the Keras chain's probabilities on the parity images, the raw images)
    if fine:
        reference_chain = chain.keras_chain(stages[0], *fine)
        stages.append(chain.refine_stage(reference_chain, fine[0], calibration, parity))
        raw = [images.read_image(p) for p in parity]
        keras_chain = chain.chain_probs(reference_chain, raw), raw
        metadata["refine"] = chain.describe(config, fine[1], len(stages[1].batch))
        metadata["keras"]["chain_ms"] = chain.chain_latency_ms(reference_chain, raw[0])
        metadata["parity"]["reference"] = "the float32 Keras chain (both stages, keras_unet.infer.predictor)"

    def fill(folder: Path) -> None:
        write_artifacts(folder, stages, keras_chain, options, metadata, log)
        if (model_path.parent / MODEL_CARD).is_file():  # the model travels with its card
            shutil.copy2(model_path.parent / MODEL_CARD, folder / MODEL_CARD)

    build_folder(out, fill, check=lambda: check_out_dir(out, options.overwrite, "export folder", keep=model_path))
    return metadata


def refine_model(run_dir: Path, config: Config, options: ExportOptions, log) -> tuple | None:
    """(float32 Keras model, Config) of the run's refine stage, or None: no stage, --no-refine, or unfinished."""
    if not config.refine.enabled:
        return None
    folder = run_dir / REFINE_DIR
    if not options.refine or not (folder / MODEL_FILE).is_file():
        log("note: the refine stage is left out (" + ("--no-refine" if not options.refine else
            f"{folder} has no {MODEL_FILE}: training unfinished?") + "); the artefacts give the first stage's masks")
        return None
    source, fine_config = load_run(folder / MODEL_FILE)
    model = float32_model(source)
    check_shapes(model, fine_config)
    return model, fine_config


def reference_run(model, source, model_path: Path, config: Config, options: ExportOptions, batch, log):
    """(metadata so far, Keras probabilities on the parity batch) from the float32 model."""
    keras_run = keras_network(model)
    reference = predict_all(keras_run, batch)
    metadata = base_metadata(model_path, config, options, len(batch))
    metadata["keras"] = {"file": model_path.name, "bytes": model_path.stat().st_size,
                         "latency_ms": latency_ms(keras_run, batch[0])}
    if model is not source:
        rebuild = compare(predict_all(keras_network(source), batch), reference, config.classes)
        metadata["float32_rebuild"] = rebuild
        log(f"mixed-precision model rebuilt in float32 (Dice vs the original {rebuild['dice']:.4f})")
    return metadata, reference


def write_artifacts(folder: Path, stages: list, keras_chain: tuple, options, metadata, log) -> None:
    """Every chosen artefact of every stage, checked, and metadata.json, into folder."""
    keep = "saved_model" in options.formats
    saved_models = []
    for stage in stages:
        saved_model = folder / stage.folder / (FILES["saved_model"] if keep else ".saved_model_source")
        saved_model.parent.mkdir(parents=True, exist_ok=True)
        if keep or any(f.startswith("tflite") for f in options.formats):
            write_saved_model(stage.model, saved_model, stage.config.image_size)  # what the TFLite converters read
        saved_models.append(saved_model)
    bar = Progress(len(options.formats), unit="artefacts")  # one step per artefact, with the time left, on stderr

    def say(line):
        bar.clear()  # a terminal's counter line, before the artefact's line on stdout
        log(line)

    for fmt in options.formats:
        metadata["artifacts"][fmt] = export_one(fmt, folder, stages, saved_models, keras_chain, options, say)
        bar.step()
    bar.close()
    if not keep:
        for saved_model in saved_models:
            shutil.rmtree(saved_model, ignore_errors=True)
    metadata["parity_passed"] = all(a["parity_passed"] for a in metadata["artifacts"].values())
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def export_one(fmt, folder, stages, saved_models, keras_chain, options, log) -> dict:
    """Write one format of every stage, run each on its parity inputs (and the chain on the parity images), and
    describe it for the metadata."""
    entries, networks = [], []
    for stage, saved_model in zip(stages, saved_models):
        path = write_artifact(fmt, stage.model, folder / stage.folder, saved_model, stage.config, stage.calibration)
        predict, tensors = runner(fmt, path)
        figures = compare(stage.reference, predict_all(predict, stage.batch), stage.config.outputs())
        figures["latency_ms"] = latency_ms(predict, stage.batch[0])
        entry = {"file": str(path.relative_to(folder)), "bytes": folder_bytes(path), "precision": PRECISION[fmt],
                 **tensors, "parity": figures}
        if path.is_file():
            entry["sha256"] = sha256_file(path)
        entries.append(entry)
        networks.append((predict, stage.config, path))
    entry, parity = entries[0], entries[0]["parity"]
    if len(stages) == 2:  # the chain is what is gated
        reference, raw = keras_chain
        exported = RefinedPredictor(*(Predictor(*n) for n in networks))
        parity = chain.compare_chain(reference, chain.chain_probs(exported, raw), stages[0].config.classes)
        parity["latency_ms"] = chain.chain_latency_ms(exported, raw[0])
        parity["stages"] = {stage.name: e.pop("parity") for stage, e in zip(stages, entries)}
        entry["refine"] = entries[1]
        entry["parity"] = parity
    parity["min_dice"] = options.int8_dice if fmt in INT8_FORMATS else options.float_dice
    entry["parity_passed"] = passed = parity["dice"] >= parity["min_dice"]
    stage_dice = "".join(f", {name} {f['dice']:.4f}" for name, f in parity.get("stages", {}).items())
    log(f"{fmt}: {entry['file']} {human_bytes(sum(e['bytes'] for e in entries))}, Dice {parity['dice']:.4f}"
        f"{' (chain' + stage_dice + ')' if stage_dice else ''}, max diff {parity['max_abs_diff']:.2e}"
        + ("" if passed else "  PARITY FAILED"))
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
        "preprocessing": {"function": "keras_unet.imaging.preprocess.prepare", "normalization": settings["normalization"],
                          "letterbox": "keep the aspect ratio (area resize when shrinking, bilinear when "
                                       "enlarging), centre, zero-pad to image_size x image_size",
                          "unletterbox": "keras_unet.imaging.preprocess.unletterbox"},
        "postprocessing": {"function": "keras_unet.imaging.postprocess.clean_masks", **settings["postprocess"]},
        "thresholds": {name: float(post.thresholds.get(name, post.threshold)) for name in config.classes},
        "parity": {"reference": "the float32 Keras model", "images": parity_count,
                   "mask_threshold": PARITY_THRESHOLD, "float_min_dice": options.float_dice,
                   "int8_min_dice": options.int8_dice},
        "artifacts": {},
    }


# -- reporting ----------------------------------------------------------------------------------------


def format_table(metadata: dict) -> str:
    """A text table: format, file, size, Dice vs Keras, max difference, latency per image, parity; for a two-stage
    export the Dice and difference are the chain's (each stage's Dice beside them), the size both models', the
    latency the whole chain's on one image."""
    stages = "refine" in metadata
    rows = [("format", "file", "size", "Dice vs Keras", "max diff", "ms/image", "parity")
            + (("Dice first / refine stage",) if stages else ())]
    keras_row = metadata.get("keras")
    if keras_row:
        rows.append(("keras", keras_row["file"], human_bytes(keras_row["bytes"]), "(reference)", "-",
                     f"{keras_row.get('chain_ms', keras_row['latency_ms']):.1f}", "-") + (("-",) if stages else ()))
    for fmt, a in metadata["artifacts"].items():
        p = a["parity"]
        size = a["bytes"] + a.get("refine", {}).get("bytes", 0)
        row = (fmt, a["file"], human_bytes(size), f"{p['dice']:.4f}", f"{p['max_abs_diff']:.2e}",
               f"{p['latency_ms']:.1f}", "ok" if a["parity_passed"] else f"FAILED (< {p['min_dice']})")
        if stages:
            row += (" / ".join(f"{f['dice']:.4f}" for f in p.get("stages", {}).values()) or "-",)
        rows.append(row)
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


