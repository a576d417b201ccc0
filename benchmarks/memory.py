"""Peak resident memory of a real training run: 512 px, batch 8, base 32 (depth 4, transposed convolutions).

Each variant runs keras_unet.train.run.train (the train.py path: masks cache, tf.data pipeline with augmentation,
fit with all callbacks, checkpoint, final validation) for one epoch in a fresh subprocess over phantom
radiographs; the peak RSS of that subprocess is read from os.wait4's rusage (ru_maxrss) and its VmHWM.
Variants: default (the project's defaults: no XLA on a CPU), xla (jit_compile: true, with the memory-saving XLA
scheduler keras_unet.train.run sets for it), xla_concurrent (XLA's own concurrency-optimised scheduler), bf16
(precision mixed_bfloat16: what "auto" picks on a CPU with avx512_bf16 or AMX).
The ratio is the 6 GiB budget over the peak (above 1: within budget).

    python benchmarks/memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Report, bench_config, cores, limit_threads, phantom_samples

from keras_unet.io.files import write_json_atomic

GIB = 1024 ** 3
BUDGET = 6 * GIB
VARIANTS = {  # name: (config overrides, environment)
    "default": ({}, {}),
    "xla": ({"jit_compile": True}, {}),
    "xla_concurrent": ({"jit_compile": True}, {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}),
    "bf16": ({"precision": "mixed_bfloat16"}, {}),
}


def child(config_path: str) -> int:
    """Run one training (in the subprocess) and print its VmHWM."""
    from common import configure_tf
    from keras_unet.config import load_config

    threads = int(os.environ.get("BENCH_THREADS", cores()))
    configure_tf(threads)
    from keras_unet.train.run import train

    config = load_config(config_path)
    start = time.time()
    result = train(config, overwrite=True, log=lambda line: None)
    hwm = next((line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")), "0")
    print(json.dumps({"vmhwm_kib": int(hwm), "seconds": time.time() - start, "epochs": result["epochs_run"]}))
    return 0


def start_variant(folder: Path, name: str, variant: tuple, args, threads: int):
    """Start one training subprocess; returns it."""
    overrides, environment = variant
    config = bench_config(folder, args.size, args.base, args.batch, epochs=1, early_stopping=0,
                          val_fraction=args.val_images / (args.train_images + args.val_images),
                          out=str(folder / f"run_{name}"), **overrides)
    config_path = folder / f"config_{name}.json"
    write_json_atomic(config_path, config.to_dict())
    env = dict(os.environ, BENCH_THREADS=str(threads), **environment)
    return subprocess.Popen([sys.executable, __file__, "--child", str(config_path)], stdout=subprocess.PIPE,
                            env=env, text=True)


def finish_variant(report, proc, name: str, args) -> float:
    """Wait for a training subprocess; its peak RSS in bytes (os.wait4's ru_maxrss)."""
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"memory: the {name} training failed (exit {proc.returncode})")
    info = json.loads(out.strip().splitlines()[-1])
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    report.line(f"memory {name:14s} {args.size} px batch {args.batch} base {args.base}: peak RSS "
                f"{peak / GIB:.2f} GiB (VmHWM {info['vmhwm_kib'] / 1024 ** 2:.2f} GiB), "
                f"{args.train_images} training + {args.val_images} validation images, {info['seconds']:.0f} s")
    return peak


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one training step per variant, variants default and xla, run side by side (< 3 min)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--base", type=int, default=32)
    p.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} "
                                                    "(default: all; --quick: default,xla)")
    p.add_argument("--parallel", action="store_true", default=None,
                   help="run the variants at the same time (default: --quick only; needs their memory together)")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: cores)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.train_images = args.batch * (1 if args.quick else 2)
    args.val_images = 2
    args.parallel = args.quick if args.parallel is None else args.parallel
    args.variants = (args.variants or ("default,xla" if args.quick else ",".join(VARIANTS))).split(",")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args.child)
    threads = args.threads or cores()
    limit_threads(threads)
    report = Report(f"memory: training peak RSS, {threads} threads, {'quick' if args.quick else 'full'}")
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
        folder = Path(folder)
        phantom_samples(folder, args.train_images + args.val_images, size=args.size)
        if args.parallel:  # memory only: the runs may share the cores, each process has its own peak
            procs = {name: start_variant(folder, name, VARIANTS[name], args, threads) for name in args.variants}
            peaks = {name: finish_variant(report, proc, name, args) for name, proc in procs.items()}
        else:
            for name in args.variants:
                proc = start_variant(folder, name, VARIANTS[name], args, threads)
                peaks[name] = finish_variant(report, proc, name, args)
    for name, peak in peaks.items():
        suffix = "" if name == "default" else f"_{name}"
        report.ratio(f"memory_budget_vs_peak_{args.size}_base{args.base}{suffix}", BUDGET / peak)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
