"""When XLA pays for training on this CPU: seconds per step with and without `jit_compile`, and what the first
epoch costs over the others (tracing, and XLA's compilation), for a few model shapes.

Each shape and mode runs in a fresh subprocess: keras_unet.train.run.compile_model (the run's loss, Adam and
metrics) and `fit` for 3 epochs of `--steps` steps on in-memory random batches, plus one validation batch per
epoch, so the figures hold the test function's compilation too. The first epoch's seconds over the median of the
others are the fit's start-up cost; XLA's compile cost is its start-up cost minus the plain one. These are the
inputs keras_unet.train.speed decides from (its constants say which run they came from).

    python benchmarks/jit_payoff.py [--quick] [--shapes 64x4x2,128x12x4,256x16x4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import Report, cores, limit_threads

SHAPES = "64x4x2,128x12x4,256x16x4"  # size x base filters x depth: the tests, the bundled sample, the JSRT recipe


def child(size: int, base: int, depth: int, jit: bool, steps: int, batch: int, epochs: int) -> None:
    """One fit (in the subprocess); prints its epoch seconds as JSON."""
    from common import configure_tf

    configure_tf(cores())
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_unet.config import Config, ModelConfig
    from keras_unet.train.run import compile_model

    config = Config(classes=["a", "b", "c"], image_size=size, batch_size=batch, epochs=epochs, jit_compile=jit,
                    model=ModelConfig(depth=depth, base_filters=base)).validate()
    keras.utils.set_random_seed(0)
    model = compile_model(config, steps)
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, size, size, 1), dtype=np.float32)
    y = (rng.random((batch * steps, size, size, 3)) > 0.5).astype(np.float32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    val = tf.data.Dataset.from_tensor_slices((x[:batch], y[:batch])).batch(batch)

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.train = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self._trained = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            self.epochs.append(now - self._start)
            self.train.append(self._trained - self._start)

    clock = Clock()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[clock])
    print(json.dumps({"epochs": clock.epochs, "train": clock.train}))


def run_child(shape: str, jit: bool, args) -> dict:
    size, base, depth = (int(v) for v in shape.split("x"))
    argv = [sys.executable, __file__, "--child", json.dumps([size, base, depth, jit, args.steps, args.batch, 3])]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 steps per epoch (default 4)")
    p.add_argument("--shapes", default=SHAPES, help=f"comma-separated SIZExBASExDEPTH (default {SHAPES})")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    limit_threads(cores())
    if args.child:
        child(*json.loads(args.child))
        return 0
    args.steps = args.steps or (2 if args.quick else 4)
    report = Report(f"jit_payoff: batch {args.batch}, {args.steps} steps per epoch, 3 epochs per fit")
    for shape in args.shapes.split(","):
        runs = {jit: run_child(shape, jit, args) for jit in (False, True)}
        step = {jit: statistics.median(r["train"][1:]) / args.steps for jit, r in runs.items()}
        startup = {jit: r["epochs"][0] - statistics.median(r["epochs"][1:]) for jit, r in runs.items()}
        compile_seconds, saved = startup[True] - startup[False], step[False] - step[True]
        pays = f"pays after {max(compile_seconds, 0) / saved:.0f} steps" if saved > 0 else "never pays"
        report.line(f"jit_payoff {shape}: step {step[False]:.3f} s plain, {step[True]:.3f} s XLA "
                    f"(saves {saved / step[False]:.0%}); first-epoch cost {startup[False]:.1f} s plain, "
                    f"{startup[True]:.1f} s XLA (compile {compile_seconds:.1f} s); XLA {pays}")
        report.ratio(f"xla_step_speedup_{shape}", step[False] / step[True])
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
