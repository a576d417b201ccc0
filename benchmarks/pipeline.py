"""Input pipeline against the training step: can keras_unet.data.pipeline.make_dataset keep the model fed?

Pipeline: images/s that make_dataset (training=True, augmentation on: rotation, scale, shift, flip with class
swap, contrast, brightness, gamma, noise) delivers on its own, iterated epoch after epoch once its cache is
filled (the first epoch decodes and letterboxes; later ones only augment, as in training), over phantom
radiographs written by keras_unet.data.phantom at 512 px.
Step: images/s the project's training step consumes (keras_unet.train.run.compile_model, `fit`, default settings)
on a batch that is already in memory, for the project's default U-Net (base 12, depth 4: the fastest step, so
the hardest case for the pipeline) and the benchmark one (base 32), at the same image size and batch. Pipeline
epochs and steps are timed alternately; ratio = pipeline / step.

    python benchmarks/pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

from common import bench_config, interleave, median, phantom_samples, spread, tf_report


def pipeline_epoch(dataset):
    """A callable that iterates one epoch of the dataset; returns nothing (wall time is the measure)."""
    def run():
        for _ in dataset:
            pass

    return run


def step_runner(config, batch):
    """A callable running one training step of the project's model on an in-memory batch; returns its seconds."""
    import keras
    import tensorflow as tf

    from keras_unet.model.unet import model_from_config
    from keras_unet.train.run import compile_model
    from train_vs_torch import StepTimer

    keras.utils.set_random_seed(config.seed)
    model = compile_model(config, 1, model_from_config(config))
    data = tf.data.Dataset.from_tensors(batch)
    timer = StepTimer()

    def run():
        timer.times.clear()
        model.fit(data, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
        return sum(timer.times)

    return run


def measure(report, samples, folder, size, args):
    from keras_unet.data.pipeline import make_dataset

    config = bench_config(folder, size, args.bases[0], args.batch)
    dataset = make_dataset(samples, config, training=True)
    batch = next(iter(make_dataset(samples[:args.batch], config, training=False)))
    candidates = {"pipeline": pipeline_epoch(dataset)}
    for base in args.bases:
        model = dataclasses.replace(config.model, base_filters=base)
        candidates[f"step_base{base}"] = step_runner(dataclasses.replace(config, model=model), batch)
    report.line(f"pipeline {size} px, batch {args.batch}, {len(samples)} images per epoch, augmentation on, "
                f"{args.reps} repetitions")
    times = interleave(candidates, args.reps, warmup=1, log=report.line if args.verbose else None)
    pipeline_rate = len(samples) / median(times["pipeline"])
    report.line(f"pipeline {size} px: {pipeline_rate:8.1f} images/s (epoch {spread(times['pipeline'])}; "
                f"{median(times.cpu['pipeline']) / len(samples) * 1000:.1f} CPU-ms/image)")
    for base in args.bases:
        seconds = times[f"step_base{base}"]
        rate = args.batch / median(seconds)
        report.line(f"step base {base:2d} {size} px: {rate:8.3f} images/s (step {spread(seconds)}; "
                    f"{median(times.cpu[f'step_base{base}']):.2f} CPU-s)")
        report.ratio(f"pipeline_vs_step_{size}_base{base}", pipeline_rate / rate)


def parse_args(argv=None):
    from keras_unet.config import ModelConfig

    default_base = ModelConfig().base_filters
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"3 repetitions, 32 images, the default base {default_base} model only (< 3 min)")
    p.add_argument("--sizes", default="256,512", help="comma-separated image sizes (default 256,512)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--images", type=int, default=None, help="phantom images per epoch (default 64, --quick 32)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, --quick 3)")
    p.add_argument("--bases", default=None,
                   help=f"base_filters of the models whose step is timed (default {default_base},32; "
                        f"--quick {default_base})")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: cores)")
    p.add_argument("--verbose", action="store_true", help="print every repetition")
    args = p.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 5)
    args.images = args.images or (32 if args.quick else 64)
    bases = args.bases or (f"{default_base}" if args.quick else f"{default_base},32")
    args.bases = [int(b) for b in bases.split(",") if b.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    report, _ = tf_report("pipeline", args)

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as folder:
        samples = phantom_samples(folder, args.images, size=512)
        for size in (int(s) for s in args.sizes.split(",")):
            measure(report, samples, folder, size, args)
    report.finish()


if __name__ == "__main__":
    main()
