"""Where a training epoch's seconds go in the project's own loop: the training steps, the validation, and every
callback hook (checkpoint, backup, history, TensorBoard, the epoch line, the NaN guard), in one real run of
keras_unet.train.run.train on the bundled sample (default settings unless given).

Each callback hook is wrapped with a timer; `steps` is the time inside Keras's train function calls (data and
compute), `batch hooks` the per-batch callbacks, `epoch hooks` the on_epoch_end work (saving). With --profile DIR
the second epoch's steps are also traced by tf.profiler into DIR (open with TensorBoard's profile plugin), and
with --cprofile FILE the whole run runs under cProfile.

    python benchmarks/loop_overhead.py [--quick] [--epochs 4] [--image-size 128] [--base-filters 12]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Report, cores, limit_threads

HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_test_batch_end", "on_epoch_begin", "on_epoch_end",
         "on_test_begin", "on_test_end", "on_train_begin", "on_train_end")


def timed_hooks(callbacks, totals):
    """Wrap the hooks each callback overrides with a timer adding into totals[(class, hook)]."""
    import keras

    for cb in callbacks:
        for hook in HOOKS:
            if getattr(type(cb), hook) is getattr(keras.callbacks.Callback, hook):
                continue
            original = getattr(cb, hook)

            def wrapper(*args, _original=original, _key=(type(cb).__name__, hook), **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    totals[_key] += time.perf_counter() - start

            setattr(cb, hook, wrapper)


def epoch_start_steps(calls):
    """The seconds of each epoch's first train-function call and of its other calls, epoch 0 of every fit left out
    (tracing, compilation). calls: (fit, epoch, seconds) in the order they ran."""
    first, rest, previous = [], [], None
    for fit, epoch, seconds in calls:
        if epoch > 0:
            (first if (fit, epoch) != previous else rest).append(seconds)
        previous = (fit, epoch)
    return first, rest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 epochs (default 4)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--base-filters", type=int, default=None)
    p.add_argument("--jit-compile", default="auto")
    p.add_argument("--profile", help="folder for a tf.profiler trace of the second epoch's steps")
    p.add_argument("--cprofile", help="file for a cProfile dump of the whole run")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 4)
    limit_threads(cores())
    import keras
    import tensorflow as tf

    from keras_unet.config import Config, merge
    from keras_unet.train.run import train

    totals = collections.defaultdict(float)
    steps = {"seconds": 0.0, "count": 0, "calls": []}  # calls: (epoch, seconds) of every train-function call
    original_fit = keras.Model.fit

    def fit(self, *a, callbacks=None, **k):
        timed_hooks(callbacks or [], totals)
        original = self.make_train_function

        def make_train_function(force=False):
            original(force)
            function = self.train_function
            if getattr(function, "timed", False):
                return function

            @functools.wraps(function)
            def step(iterator):
                start = time.perf_counter()
                try:
                    return function(iterator)
                finally:
                    seconds = time.perf_counter() - start
                    steps["seconds"] += seconds
                    steps["calls"].append((*epoch, seconds))
                    steps["count"] += 1
                    if args.profile and steps["count"] == epoch_steps[0] + 1:
                        tf.profiler.experimental.start(args.profile)
                    if args.profile and steps["count"] == 2 * epoch_steps[0] + 1:
                        tf.profiler.experimental.stop()

            step.timed = True
            self.train_function = step
            return step

        self.make_train_function = make_train_function
        return original_fit(self, *a, callbacks=callbacks, **k)

    keras.Model.fit = fit
    epoch_steps, epoch = [4], [-1, 0]  # epoch: (the fit, its epoch) now running
    original_begin = keras.callbacks.CallbackList.on_epoch_begin

    def on_epoch_begin(self, index, logs=None):
        epoch[:] = [epoch[0] + (index == 0), index]
        return original_begin(self, index, logs)

    keras.callbacks.CallbackList.on_epoch_begin = on_epoch_begin
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as folder:
        overrides = {"model.base_filters": args.base_filters, "image_size": args.image_size,
                     "jit_compile": {"true": True, "false": False}.get(args.jit_compile, "auto")}
        config = merge(Config(data=str(REPO / "data" / "sample"), out=str(Path(folder) / "run"),
                              cache_dir=str(Path(folder) / "cache"), epochs=args.epochs, early_stopping=0),
                       overrides)
        epoch_steps[0] = -(-int(round(40 * (1 - config.val_fraction))) // config.batch_size)
        lines = []
        profiler = cProfile.Profile() if args.cprofile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        result = train(config, log=lines.append)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
        wall = time.perf_counter() - start
    report = Report(f"loop_overhead: bundled sample, {config.image_size} px, base {config.model.base_filters}, "
                    f"{args.epochs} epochs, jit_compile {config.jit_compile}")
    report.line(f"run {wall:.1f} s, fit {result['train_seconds']:.1f} s; {steps['count']} train-function calls "
                f"{steps['seconds']:.1f} s")
    first, rest = epoch_start_steps(steps["calls"])
    if first and rest:
        a, b = statistics.median(first), statistics.median(rest)
        report.line(f"  first step of an epoch (epochs 2+ of each fit, median of {len(first)}) {a:.3f} s, other steps "
                    f"{b:.3f} s: {a - b:+.3f} s an epoch start")
    for (name, hook), seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        report.line(f"  {name:20s} {hook:22s} {seconds:8.3f} s")
    hooks = sum(totals.values())
    report.line(f"callback hooks {hooks:.2f} s = {hooks / max(result['train_seconds'], 1e-9):.1%} of fit")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
