"""Training throughput of the project's real training path against a PyTorch reference of the same U-Net.

Keras: keras_unet.model.unet (depth 4, base 32 or 64, transposed-convolution upsampling, batch norm), compiled by
keras_unet.train.run.compile_model (the `bce` loss, cosine-decayed Adam, the Dice/IoU metrics), `fit` on
keras_unet.data.pipeline.make_dataset (augmentation on) over phantom radiographs written by keras_unet.data.phantom;
a step is timed from the batch-begin to the batch-end callback, so waiting for data counts.
PyTorch: the same architecture written out below (two 3x3 conv + batch norm + ReLU per level, max-pool down, 2x2
transposed conv up, 1x1 head), BCEWithLogitsLoss and Adam, on in-memory batches of the same images.

Every candidate runs in its own worker process with the same thread count (the machine's cores); the workers
are started and warmed up one after the other (the first repetition compiles), then the coordinator asks each
in turn for one repetition of `--steps` steps, in an order that rotates, and takes medians. Candidates:

  keras         the project's defaults (jit_compile "auto": no XLA on a CPU)
  keras_xla     jit_compile true (XLA, with the memory-saving scheduler keras_unet.train.run sets for it)
  keras_xla_concurrent  the same with XLA's default concurrency-optimised scheduler (before that change)
  keras_onednn  TF_ENABLE_ONEDNN_OPTS=1 (TensorFlow's oneDNN kernels; off by default on CPUs without AVX-512)
  keras_bf16    precision mixed_bfloat16 (bf16 convolutions through oneDNN; pays only on avx512_bf16 / AMX CPUs)
  keras_keras_bn, keras_bf16_keras_bn  the same without keras_unet.model.fused (Keras's own batch normalisation,
                the training path before the tenth session)
  keras_bf16_xla  mixed_bfloat16 with jit_compile true
  torch         the PyTorch reference

    python benchmarks/train_vs_torch.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import (Report, Worker, bench_config, configure_tf, cores, interleave, limit_threads, median,
                    phantom_samples, serve, spread)

XLA_CONCURRENT = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
VARIANTS = {  # name: (worker kind, jit_compile, precision, extra environment)
    "keras": ("keras", "auto", "float32", {}),
    "keras_bf16": ("keras", "auto", "mixed_bfloat16", {}),
    "keras_keras_bn": ("keras", "auto", "float32", {"BENCH_KERAS_BATCH_NORM": "1"}),
    "keras_bf16_keras_bn": ("keras", "auto", "mixed_bfloat16", {"BENCH_KERAS_BATCH_NORM": "1"}),
    "keras_bf16_xla": ("keras", True, "mixed_bfloat16", {}),
    "keras_xla": ("keras", True, "float32", {}),
    "keras_xla_concurrent": ("keras", True, "float32", XLA_CONCURRENT),
    "keras_onednn": ("keras", "auto", "float32", {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    "keras_onednn_xla": ("keras", True, "float32", {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    "torch": ("torch", None, "float32", {}),
}


def torch_unet(in_channels: int = 1, classes: int = 3, base: int = 64, depth: int = 4):
    """The classic U-Net in PyTorch (NCHW), returning logits; base 64, depth 4 is Ronneberger et al.'s 64...1024."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2 ** level for level in range(depth)]
            self.down = nn.ModuleList()
            c = in_channels
            for w in widths:
                self.down.append(block(c, w))
                c = w
            self.pool = nn.MaxPool2d(2)
            self.bottleneck = block(c, base * 2 ** depth)
            c = base * 2 ** depth
            self.up, self.dec = nn.ModuleList(), nn.ModuleList()
            for w in reversed(widths):
                self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
                self.dec.append(block(2 * w, w))
                c = w
            self.head = nn.Conv2d(c, classes, 1)

        def forward(self, x):
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


def trainable_count(keras_model) -> int:
    return int(sum(int(w.numpy().size) for w in keras_model.trainable_weights))


def torch_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def samples_in(folder):
    """The Samples of the phantom data the coordinator wrote (the masks cache is already filled)."""
    from keras_unet.data.samples import prepare_samples
    from keras_unet.data.phantom import LABELS

    folder = Path(folder)
    return prepare_samples(folder / "data", list(LABELS), cache_dir=folder / "cache", log=None)


# -- workers ----------------------------------------------------------------------------------------------


def StepTimer():  # noqa: N802  (a class made on demand so that importing this module does not import Keras)
    """Keras callback: seconds of every training step (batch begin to batch end)."""
    import keras

    class _StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self._start = [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    return _StepTimer()


def keras_worker(spec: dict) -> None:
    from keras_unet.train.run import compile_model  # first, as train.py imports it: TensorFlow starts here

    configure_tf(spec["threads"])
    import keras

    from keras_unet.data.pipeline import make_dataset
    from keras_unet.model.unet import model_from_config

    config = bench_config(spec["folder"], spec["size"], spec["base"], spec["batch"], jit_compile=spec["jit"],
                          precision=spec["precision"])
    samples = samples_in(spec["folder"])
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.precision)  # as keras_unet.train.run does before building the model
    if os.environ.get("BENCH_KERAS_BATCH_NORM"):
        import keras_unet.train.run as run_module
        run_module.fuse_batch_norm = lambda model: 0  # Keras's own BatchNormalization call, for the comparison
    model = compile_model(config, spec["steps"], model_from_config(config))
    dataset = make_dataset(samples, config, training=True)  # one epoch = `steps` batches
    timer = StepTimer()

    def run():
        timer.times.clear()
        cpu = time.process_time()
        model.fit(dataset, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
        return {"wall": sum(timer.times), "cpu": time.process_time() - cpu, "steps": len(timer.times)}

    start = time.perf_counter()
    run()
    serve_ready(run, time.perf_counter() - start, trainable_count(model))


def torch_batches(samples, config):
    """NCHW float32 tensors of the images and masks at network size (numpy/OpenCV preprocessing, no TensorFlow)."""
    import numpy as np
    import torch

    from keras_unet.io import images
    from keras_unet.imaging.preprocess import letterbox, prepare

    xs, ys = [], []
    for s in samples:
        xs.append(prepare(images.read_image(s.image_path), config)[0])
        masks = np.stack([images.read_image(p) for p in s.mask_paths], axis=-1).astype(np.float32) / 255.0
        ys.append(letterbox(masks, config.image_size)[0])
    b = config.batch_size
    return [(torch.from_numpy(np.stack(xs[i:i + b]).transpose(0, 3, 1, 2).copy()),
             torch.from_numpy(np.stack(ys[i:i + b]).transpose(0, 3, 1, 2).copy())) for i in range(0, len(xs), b)]


def torch_worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    config = bench_config(spec["folder"], spec["size"], spec["base"], spec["batch"])
    batches = torch_batches(samples_in(spec["folder"]), config)
    torch.manual_seed(config.seed)
    model = torch_unet(1, len(config.classes), spec["base"], config.model.depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()

    def run():
        cpu, start = time.process_time(), time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "steps": len(batches)}

    start = time.perf_counter()
    run()
    serve_ready(run, time.perf_counter() - start, torch_count(model))


def serve_ready(run, warmup: float, parameters: int) -> None:
    from common import reply

    reply({"ready": True, "warmup_s": warmup, "parameters": parameters})
    serve({"run": run})


def worker_main(spec: dict) -> int:
    limit_threads(spec["threads"])
    (keras_worker if spec["kind"] == "keras" else torch_worker)(spec)
    return 0


# -- coordinator ------------------------------------------------------------------------------------------


def start_worker(name: str, spec: dict) -> Worker:
    kind, jit, precision, env = VARIANTS[name]
    spec = {**spec, "kind": kind, "jit": jit, "precision": precision}
    return Worker(name, [__file__, "--worker", json.dumps(spec)], env=env)


def measure(report, folder, size, base, args, threads):
    spec = {"folder": str(folder), "size": size, "base": base, "batch": args.batch, "steps": args.steps,
            "threads": threads}
    report.line(f"train {size} px, base {base}, batch {args.batch}, {args.steps} step(s) per repetition, "
                f"{args.reps} repetitions, {threads} threads")
    workers = {}
    try:
        for name in args.variants:
            workers[name] = start_worker(name, spec)
            ready = workers[name].ready
            report.line(f"  {name:16s} ready: {ready['parameters']} trainable parameters, "
                        f"first repetition {ready['warmup_s']:.1f} s")

        def candidate(worker):
            def call():
                result = worker.call("run")
                return result["wall"], result["cpu"]
            return call

        times = interleave({n: candidate(w) for n, w in workers.items()}, args.reps, warmup=0,
                           log=report.line if args.verbose else None)
    finally:
        peaks = {name: w.close().get("vmhwm_kib", 0) for name, w in workers.items()}
    images = args.batch * args.steps
    rates = {}
    for name, seconds in times.items():
        rates[name] = images / median(seconds)
        report.line(f"train {name:16s} {size} px base {base}: {rates[name]:7.3f} images/s "
                    f"({median(seconds) / args.steps:.3f} s/step, reps {spread(seconds)}; "
                    f"{median(times.cpu[name]) / images:.2f} CPU-s/image; peak RSS {peaks[name] / 2 ** 20:.2f} GiB)")
    suffix = f"{size}_base{base}"
    for name in rates:
        if name != "torch":
            tail = "" if name == "keras" else "_" + name.removeprefix("keras_")
            report.ratio(f"train_vs_torch_{suffix}{tail}", rates[name] / rates["torch"])
    for bf16, float32 in (("keras_bf16", "keras"), ("keras_bf16_xla", "keras_xla")):
        if bf16 in rates and float32 in rates:  # issue 23's bf16 target: >= 1.5x float32 images/s in one run
            report.ratio(f"train_{bf16.removeprefix('keras_')}_vs_float32_{suffix}", rates[bf16] / rates[float32])
    for fused, plain, precision in (("keras", "keras_keras_bn", "float32"), ("keras_bf16", "keras_bf16_keras_bn", "bf16")):
        if fused in rates and plain in rates:  # what keras_unet.model.fused buys in the same run
            report.ratio(f"train_fused_bn_vs_keras_bn_{precision}_{suffix}", rates[fused] / rates[plain])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="base 32 only, candidates keras and torch, 2 repetitions (< 3 min on an idle machine)")
    p.add_argument("--sizes", default="256", help="comma-separated image sizes (default 256)")
    p.add_argument("--bases", default=None, help="comma-separated base filter counts (default 32,64; --quick 32)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, --quick 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps per repetition (default 1)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated candidates from {', '.join(VARIANTS)} "
                        "(default keras,keras_xla,keras_onednn,torch; --quick keras,torch)")
    p.add_argument("--threads", type=int, default=None, help="threads for TensorFlow and torch (default: cores)")
    p.add_argument("--verbose", action="store_true", help="print every repetition")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 5)
    args.bases = args.bases or ("32" if args.quick else "32,64")
    args.steps = args.steps or 1
    default = "keras,torch" if args.quick else "keras,keras_xla,keras_onednn,torch"
    args.variants = [v.strip() for v in (args.variants or default).split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "torch" not in args.variants or not any(v.startswith("keras") for v in args.variants):
        p.error(f"--variants: needs torch and at least one keras candidate, from {', '.join(VARIANTS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    threads = args.threads or cores()
    limit_threads(threads)
    report = Report(f"train_vs_torch: {'quick' if args.quick else 'full'}, {', '.join(args.variants)}")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as folder:
        phantom_samples(folder, args.batch * args.steps, size=512)
        for base in (int(b) for b in args.bases.split(",")):
            for size in (int(s) for s in args.sizes.split(",")):
                measure(report, folder, size, base, args, threads)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
