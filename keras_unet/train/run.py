"""Training a run: the run folder, distribution strategy, precision, the stages (first, refine, self-training's
teacher and student), and the final validation scores."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_unet import __version__
from keras_unet.config import DEFAULT_DATA_DIR, Config, config_from_dict, settings_differences
from keras_unet.data.cleanup import resolve_postprocess
from keras_unet.data.phantom import bundled_sample
from keras_unet.data.pipeline import crop_items, flip_for, make_dataset
from keras_unet.data.samples import load_samples, prepare_samples, resolve_classes, write_problem_list
from keras_unet.errors import ConfigError, TrainingError
from keras_unet.imaging.crops import crop
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predictor import Predictor
from keras_unet.infer.runtimes import keras_network
from keras_unet.io import images
from keras_unet.io.files import hold_lock, write_json_atomic
from keras_unet.model.fused import fuse_batch_norm
from keras_unet.model.losses import get_loss, segmentation_metrics
from keras_unet.model.saving import load_model
from keras_unet.model.unet import model_from_config
from keras_unet.run_folder import (BACKUP_DIR, CONFIG_FILE, CURVES_FILE, FIT_DONE, HISTORY_FILE, LOGS_DIR,
                                   METRICS_FILE, MODEL_FILE, PSEUDO_DIR, REFINE_DIR, RUN_LOCK, SKIPPED_FILE, SPLIT_FILE)
from keras_unet.train.callbacks import BestCheckpoint, EpochClock, epoch_summaries
from keras_unet.train.card import write_model_card
from keras_unet.train.distributed import is_distributed, multi_worker_strategy, read_tf_config, worker_shard
from keras_unet.train.fit import fit, resume_history
from keras_unet.train.history import plot_curves, read_history
from keras_unet.train.pretrain import check_start, list_unlabelled, start_from
from keras_unet.train.shape import add_uncertainty, write_shape_prior
from keras_unet.train.selftrain import pseudo_label, pseudo_labelled
from keras_unet.train.speed import (cpu_flags, fit_figures, precision_choice, read_cpuinfo, record_fit,
                                    resolve_jit_compile)


def gpu_count() -> int:
    """Number of GPUs TensorFlow sees."""
    return len(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: str) -> str:
    """Concrete dtype policy: 'auto' is mixed_float16 with a GPU, mixed_bfloat16 on a bf16 CPU, else float32."""
    return precision_decision(precision).value


def precision_decision(precision: str):
    """The dtype policy for `precision` on this machine and why (a speed.Choice)."""
    return precision_choice(precision, gpu_count(), cpu_flags(read_cpuinfo()))


def select_strategy() -> tf.distribute.Strategy:
    """Multi-worker when TF_CONFIG is set (train.distributed: bounded wait for the other workers), mirrored over
    several GPUs, else the default one-device strategy."""
    cluster = read_tf_config()
    if cluster is not None:
        return multi_worker_strategy(cluster)
    if gpu_count() > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def prepare_run_dir(out: Path, config: Config, overwrite: bool) -> bool:
    """Create the run directory; True when resuming an unfinished run (no metrics.json yet) of the same settings."""
    if out.exists() and any(path.name != RUN_LOCK for path in out.iterdir()):
        saved = out / CONFIG_FILE
        interrupted = (out / BACKUP_DIR).exists() or (saved.exists() and not (out / METRICS_FILE).exists()) or (
            config.refine.enabled and saved.exists() and not (out / REFINE_DIR / METRICS_FILE).exists())
        differences = _differences(saved, config) if interrupted and saved.exists() and not overwrite else []
        if overwrite:
            for path in out.iterdir():  # all but the lock this process holds
                if path.name != RUN_LOCK:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        elif interrupted and saved.exists() and not differences:
            return True
        elif interrupted:
            listed = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
            raise ConfigError(f"{out}: holds an interrupted run with other settings"
                              + (f" ({listed}; the run's value first)" if differences else "")
                              + "; resume it with its own settings, use another --out, or --overwrite to discard it")
        else:
            raise ConfigError(f"{out}: run directory already exists; use another --out, or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return False


def _same_run(saved: Path, config: Config) -> bool:
    return not _differences(saved, config)


def _differences(saved: Path, config: Config) -> list[str]:
    """'setting: the run's value -> this command's' for each setting in which config differs from saved."""
    try:
        old = json.loads(saved.read_text())
    except (OSError, ValueError):
        return [f"{saved.name} cannot be read"]
    if not isinstance(old, dict):
        return [f"{saved.name} holds no settings"]
    ignore = {"version", "skip_bad", "jit_compile_resolved", "precision_resolved"}  # the last two: records
    new = config.to_dict()
    return settings_differences(old, new, ignore)


def report_skipped(out: Path, bad: list, log=print) -> None:
    """Write skipped.txt (file: problem per line) and say so in one line; remove a stale one when none."""
    path = out / SKIPPED_FILE
    if not bad:
        path.unlink(missing_ok=True)
        return
    write_problem_list(path, bad)
    log(f"warning: {len(bad)} unusable annotation files skipped (--skip-bad); the list is in {path}")


XLA_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def xla_memory_scheduler() -> None:
    """Have XLA order a CPU step to save memory rather than to run operations concurrently.

    Unless XLA_FLAGS already says otherwise; it only takes effect if XLA has not compiled anything yet in this
    process. Same results, about 23% less peak memory (512 px, batch 8, base 32: 5.2 instead of 6.8 GiB) at the
    same speed on a 2-core CPU (benchmarks/README.md)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_SCHEDULER_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{XLA_SCHEDULER_FLAG}=false".strip()


def compile_model(config: Config, steps_per_epoch: int, model: keras.Model | None = None,
                  jit_compile: bool | None = None) -> keras.Model:
    """The U-Net (built from the config unless given) with its loss, a cosine-decayed Adam and the Dice/IoU metrics.

    jit_compile: XLA on or off; None: the config's, "auto" decided by speed.resolve_jit_compile."""
    if jit_compile is None:
        jit_compile = resolve_jit_compile(config, steps_per_epoch).value
    if jit_compile is True:
        xla_memory_scheduler()
    model = model_from_config(config) if model is None else model
    fuse_batch_norm(model)  # TensorFlow's fused kernel: half the step under bf16 on a CPU (model/fused.py)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=get_loss(config.loss),
                  metrics=segmentation_metrics(config.outputs()), jit_compile=jit_compile)
    model.optimizer.build(model.trainable_variables)  # built here, fit traces its step once, not twice
    return model


def crop_fractions(items) -> np.ndarray:
    """The share of foreground pixels of each crop's own structure over the crops (data.crop_items)."""
    found = total = 0
    for _, path, box in items:
        found += int(np.count_nonzero(crop(images.read_image(path), box)))
        total += box[2] * box[2]
    return np.array([found / max(total, 1)])


def foreground_fractions(samples) -> np.ndarray:
    """Each class's share of foreground pixels over the samples' masks."""
    counts, total = None, 0
    for sample in samples:
        planes = [images.read_image(path) > 0 for path in sample.mask_paths]
        found = np.array([plane.sum() for plane in planes], dtype=np.float64)
        counts = found if counts is None else counts + found
        total += planes[0].size
    return counts / max(total, 1)


def set_prior_bias(model, fractions, floor: float = 1e-4) -> None:
    """Set the output layer's bias so that an untrained model predicts each class's foreground share."""
    share = np.clip(np.asarray(fractions, dtype=np.float64), floor, 0.5)
    layer = model.get_layer("logits")
    layer.bias.assign(np.log(share / (1.0 - share)).astype(layer.bias.dtype))


def _fit(model, train_ds, val_ds, config: Config, out: Path, best: float, append: bool, steps: int = 0,
         strategy=None, finished: bool = False) -> None:
    """fit() with the run's callbacks: the model kept, TensorBoard logs and early stopping; the epochs' seconds
    go to the speed cache (what jit_compile "auto" decides from next time)."""
    clock = EpochClock()
    callbacks = [BestCheckpoint(out / MODEL_FILE, best=best, keep=config.checkpoint),
                 epoch_summaries(keras.callbacks.TensorBoard(str(out / LOGS_DIR), write_graph=False, profile_batch=0)),
                 clock]
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_dice", mode="max", patience=config.early_stopping, verbose=1))
    fit(model, train_ds, config.epochs, out, out / HISTORY_FILE, append, val_ds=val_ds, callbacks=callbacks,
        strategy=strategy, steps=steps, batch_size=config.batch_size, finished=finished, advice=f"the learning rate ({config.learning_rate}) is likely too high, or the data holds broken "
               "images/masks. The last good model is kept.")
    record_fit(config, bool(getattr(model, "jit_compile", False)), fit_figures(clock.epochs, clock.train, steps))


def train(config: Config, overwrite: bool = False, log=print) -> dict:
    """Train a U-Net as the config says (then its refine stage, if enabled); returns the final validation scores.

    The caller's config is left as it is: the run works on a copy with the classes and precision resolved."""
    config = config_from_dict(config.to_dict())
    precision = precision_decision(config.precision)
    if config.data == DEFAULT_DATA_DIR and not Path(config.data).is_dir():  # an installed package: no checkout here
        config.data = str(bundled_sample(config.cache_dir or None))
        log(f"the bundled sample ({DEFAULT_DATA_DIR} of the source tree) is generated here: {config.data}")
    config = dataclasses.replace(config, classes=resolve_classes(config.classes, Path(config.data)),
                                 precision=precision.value, precision_resolved=precision.as_dict()).validate()
    start = check_start(config)  # --init-weights and --pretrain problems surface before the run directory is made
    train_samples, _ = load_samples(config, log=None, bad=[], require_pixels=True)  # and classes without a pixel
    config = resolve_postprocess(config, log, train_samples)  # per-class keep_largest and fill_holes from them
    out = Path(config.out)
    cluster = read_tf_config()  # a TF_CONFIG that does not parse fails here, in one line
    if cluster is not None and config.pretrain_data:
        raise ConfigError("--pretrain does not run on several workers (TF_CONFIG): pretrain on one machine, then "
                          "start the workers with --init-weights RUN/pretrain/body.weights.npz")
    if cluster is not None and not cluster.is_chief:  # another worker: the chief alone writes the run folder
        return _train_privately(config, cluster, start, log)
    with run_lock(out):  # a second training pointed at this --out refuses, naming this process
        return _train_run(config, out, start, overwrite, log)


def run_lock(out: Path):
    """The run folder's lock file, held while a training writes it; a multi-worker cluster's chief holds it alone."""
    cluster = read_tf_config()
    if cluster is not None and not cluster.is_chief:
        return contextlib.nullcontext()
    return hold_lock(out / RUN_LOCK, "another training is writing this run folder")


def _train_privately(config: Config, cluster, start, log) -> dict:
    """train() on a worker other than the chief: the same stages in a private temporary folder, removed after."""
    with tempfile.TemporaryDirectory(prefix=f"keras_unet_{cluster.task_type}{cluster.index}_") as private:
        log(f"{cluster.name} of {cluster.size}: trains with the chief, which writes {config.out}; "
            f"this worker's own files go to {private} (removed at the end)")
        return _train_run(dataclasses.replace(config, out=private), Path(private), start, False, log)


def _train_run(config: Config, out: Path, start, overwrite: bool, log) -> dict:
    """train()'s stages in its locked run folder out."""
    resuming = prepare_run_dir(out, config, overwrite)
    result = _finished(out, "first stage", log) if resuming else None
    if result is None:
        result = (_self_train(config, out, start, log) if config.self_train.data
                  else _train_stage(config, out, resuming, start, log))
    if config.refine.enabled:
        stage = config.refine_stage()
        log(f"refine stage: crops around {', '.join(stage.crops.classes)} at {stage.image_size} px")
        refined = _train_stage(stage, Path(stage.out), prepare_run_dir(Path(stage.out), stage, False), None, log)
        result["refine"] = refined
        write_json_atomic(out / METRICS_FILE, result)
    return result


def _record(path: Path, **fields) -> None:
    """Set fields of a saved config.json (what a stage resolved), leaving its other settings as they are."""
    if path.exists():
        write_json_atomic(path, {**json.loads(path.read_text()), **fields})


def _finished(out: Path, stage: str, log) -> dict | None:
    """The scores of a stage that already finished in out (its metrics.json), else None."""
    path = out / METRICS_FILE
    if not path.exists():
        return None
    log(f"{stage} already finished: {out / MODEL_FILE}")
    return json.loads(path.read_text())


def _self_train(config: Config, out: Path, start, log) -> dict:
    """Teacher on the labelled images (RUN/teacher), its masks for the unlabelled ones (RUN/pseudo), then the
    run's model on both; each part resumes or is reused after an interruption."""
    write_json_atomic(out / CONFIG_FILE, config.to_dict())  # an interrupted teacher or labelling is then recognised as this run
    teacher = config.teacher_stage()
    teacher_dir = Path(teacher.out)
    teacher_result = _finished(teacher_dir, "teacher", log)
    if teacher_result is None:
        log(f"self-training: teacher on the labelled images in {teacher_dir}")
        teacher_result = _train_stage(teacher, teacher_dir, prepare_run_dir(teacher_dir, teacher, False), start, log)
    summary = pseudo_labelled(out / PSEUDO_DIR)
    if summary is None:
        paths = list_unlabelled(config.self_train.data, "--self-train")
        predictor = load_predictor(teacher_dir / MODEL_FILE, refine=False)
        summary = pseudo_label(predictor, paths, Path(config.self_train.data).expanduser(), out / PSEUDO_DIR, log)
    log(f"pseudo-labels: {summary['images']} images in {out / PSEUDO_DIR}"
        + (f" ({len(summary['skipped'])} left out)" if summary["skipped"] else ""))
    pseudo = prepare_samples(out / PSEUDO_DIR, config.classes, cache_dir=config.cache_dir or None, log=log)
    resuming = (out / BACKUP_DIR).exists() or (out / HISTORY_FILE).exists()  # the student had begun
    result = _train_stage(config.student_stage(), out, resuming, None, log, extra_train=pseudo, save_config=False)
    result.update(teacher=teacher_result, pseudo_labelled=len(pseudo))
    write_json_atomic(out / METRICS_FILE, result)
    return result


def _train_stage(config: Config, out: Path, resuming: bool, start, log, extra_train=(), save_config=True) -> dict:
    """Train one model into the prepared run folder out; returns and writes its validation scores.

    extra_train: samples added to the training ones (pseudo-labelled); save_config: write out/config.json."""
    if save_config:
        write_json_atomic(out / CONFIG_FILE, config.to_dict())
    log(f"{'resuming' if resuming else 'run'}: {out}  classes: {', '.join(config.classes)}  "
        f"precision: {config.precision} ({config.precision_resolved.get('reason', 'set in the config')})")
    if config.augment.enabled and config.augment.flip and flip_for(config) is None:
        log("note: horizontal flip is off: a left_*/right_* class has no partner in the class list")

    bad: list = []
    train_samples, val_samples = load_samples(config, log, bad)
    if not config.crops.classes:  # the masks' shapes, for predict.py's quality flags (infer.flags)
        write_shape_prior(out, train_samples, config.classes)
    train_samples = train_samples + list(extra_train)
    report_skipped(out, bad, log)
    write_json_atomic(out / SPLIT_FILE, {"train": [s.stem for s in train_samples], "val": [s.stem for s in val_samples]})
    items = None
    if config.crops.classes:
        items = crop_items(train_samples, config)
        log(f"{len(items)} training crops from {len(train_samples)} images ({len(val_samples)} validation images) "
            f"at {config.image_size} px")
        train_count = len(items)
    else:
        log(f"{len(train_samples)} training and {len(val_samples)} validation images at {config.image_size} px")
        train_count = len(train_samples)

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.precision)
    try:
        strategy = select_strategy()
        steps = math.ceil(train_count / config.batch_size)
        jit = resolve_jit_compile(config, steps)
        config = dataclasses.replace(config, jit_compile_resolved=jit.as_dict())
        _record(out / CONFIG_FILE, jit_compile_resolved=config.jit_compile_resolved)
        log(f"XLA (jit_compile {config.jit_compile}): {'on' if jit.value else 'off'}, {jit.reason}")
        with strategy.scope():
            model = compile_model(config, steps, jit_compile=jit.value)
        if config.init_weights or config.pretrain_data:
            start_from(model, config, start, out, strategy, log)  # pretraining (when asked), then matching layers
        if config.model.prior_bias:
            fractions = crop_fractions(items) if items is not None else foreground_fractions(train_samples)
            set_prior_bias(model, fractions)
            log("output bias set to the foreground prior: " + ", ".join(
                f"{c} {f:.4f}" for c, f in zip(config.outputs(), fractions)))
        train_ds = make_dataset(train_samples, config, training=True, items=items)
        val_ds = make_dataset(val_samples, config, training=False)
        distributed = is_distributed(strategy)
        if distributed:  # each worker reads its share of the files (train.distributed)
            def train_ds(context, batch):
                return make_dataset(worker_shard(train_samples, context), config, training=True, batch_size=batch,
                                    items=None if items is None else worker_shard(items, context))

            def val_shard(context, batch):
                return make_dataset(worker_shard(val_samples, context), config, training=False, batch_size=batch)
        history_path = out / HISTORY_FILE
        backup = out / BACKUP_DIR
        fit_done = resuming and (backup / FIT_DONE).exists()
        previous = resume_history(out, history_path, resuming, fit_done)
        best = max((r.get("val_dice", -math.inf) for r in previous), default=-math.inf)
        if best != best:  # NaN
            best = -math.inf
        start = time.time()
        if not fit_done or distributed:  # every worker enters the loop: the chief tells the others where it was
            _fit(model, train_ds, val_shard if distributed else val_ds, config, out, best,
                 resuming and history_path.exists(), steps, strategy, fit_done)
            (backup / FIT_DONE).parent.mkdir(exist_ok=True)
            (backup / FIT_DONE).write_text("fit() ended normally\n")
        elapsed = time.time() - start
        history = read_history(history_path)
        if history:
            plot_curves(history, out / CURVES_FILE)
        if not (out / MODEL_FILE).exists():
            raise TrainingError(f"{out / MODEL_FILE}: no model was saved (the validation Dice was never finite)")
        best_model = load_model(out / MODEL_FILE)  # the network alone: scored with the run's loss and metrics
        best_model.compile(loss=get_loss(config.loss), metrics=segmentation_metrics(config.outputs()))
        scores = best_model.evaluate(val_ds, verbose=0, return_dict=True)
    finally:
        keras.config.set_dtype_policy("float32")
    result = {
        "run_dir": str(out),
        "train_seconds": round(elapsed, 1),
        "val_dice": float(scores["dice"]),
        "val_iou": float(scores["iou"]),
        "val_dice_per_class": {c: float(scores.get(f"dice_{c}", scores["dice"])) for c in config.outputs()},
        "epochs_run": len(history),
        "version": __version__,
    }
    write_json_atomic(out / METRICS_FILE, result)
    write_model_card(out, config, result, [s.spacing for s in [*train_samples, *val_samples]])
    if not config.crops.classes:  # the model's uncertainty on the validation images, for the quality flags
        add_uncertainty(out, Predictor(keras_network(best_model), config, out / MODEL_FILE), val_samples)
    shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
    per_class = ", ".join(f"{c} {v:.3f}" for c, v in result["val_dice_per_class"].items())
    log(f"validation Dice {result['val_dice']:.3f} ({per_class}); IoU {result['val_iou']:.3f}; "
        f"{result['epochs_run']} epochs in {elapsed:.0f} s; model: {out / MODEL_FILE}")
    return result
