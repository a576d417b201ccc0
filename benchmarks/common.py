"""Helpers shared by the benchmarks: threads, side-by-side timing, phantom data, FLOP counting, matmul peak, output.

Every benchmark prints one line per measurement and ends with one `ratio <name> <value>` line per ratio (higher
is better). Ratios are always taken between figures measured in the same run, with the candidates interleaved
round-robin (the order rotating every repetition) so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """Thread counts for the BLAS / OpenMP libraries; call before numpy, TensorFlow or torch are imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_tf(threads: int) -> None:
    """TensorFlow intra- and inter-op thread pools of `threads` threads (before any TensorFlow op runs)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# -- timing -----------------------------------------------------------------------------------------------


def timed(fn) -> float:
    """Seconds one call of fn() takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Timings(dict):
    """{name: [wall seconds per call]}, with .cpu = {name: [process CPU seconds per call]}."""

    def __init__(self, names):
        super().__init__({name: [] for name in names})
        self.cpu = {name: [] for name in names}


def interleave(candidates: dict, reps: int, warmup: int = 1, log=None) -> Timings:
    """Wall and CPU seconds per call of each callable: `warmup` untimed calls each, then `reps` timed rounds.

    Each round calls every candidate once, in an order that rotates from round to round. A callable may return
    the seconds it measured itself (a float), which then replace the wall time of the call, or a (wall, cpu)
    pair. The CPU time (all threads of the process that did the work) is a second view that depends less on
    what else the machine runs."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    times = Timings(names)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            cpu, start = time.process_time(), time.perf_counter()
            own = candidates[name]()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            if isinstance(own, tuple):  # (wall, cpu) measured elsewhere, e.g. by a worker process
                wall, cpu = own
            elif isinstance(own, float):
                wall = own
            times.cpu[name].append(cpu)
            times[name].append(wall)
            if log:
                log(f"  rep {r + 1}/{reps} {name}: {times[name][-1]:.3f} s (cpu {times.cpu[name][-1]:.2f} s)")
    return times


def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> str:
    """'min-max' of a list of seconds, for the measurement lines."""
    return f"{min(values):.3f}-{max(values):.3f} s"


class Report:
    """Measurement lines as they come, and the `ratio <name> <value>` lines at the end."""

    def __init__(self, title: str):
        self.ratios: dict[str, float] = {}
        self.start = time.time()
        print(f"# {title}", flush=True)
        print(f"# {machine()}", flush=True)

    def line(self, text: str) -> None:
        print(text, flush=True)

    def ratio(self, name: str, value: float) -> float:
        self.ratios[name] = float(value)
        print(f"  -> {name} {value:.3f}", flush=True)
        return value

    def finish(self) -> None:
        print(f"# finished in {time.time() - self.start:.0f} s; load average now {load_average()}", flush=True)
        for name, value in self.ratios.items():
            print(f"ratio {name} {value:.3f}", flush=True)



def tf_report(name: str, args) -> tuple["Report", int]:
    """Thread limits and TensorFlow's pools set to --threads (default: cores), and the script's Report."""
    threads = args.threads or cores()
    limit_threads(threads)
    configure_tf(threads)
    import tensorflow as tf

    mode = "quick" if args.quick else "full"
    return Report(f"{name}: TensorFlow {tf.__version__}, {threads} threads, {mode}"), threads

def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The SIMD features that matter here (AVX-512, VNNI, bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return ",".join(f for f in wanted if f in flags)


def machine() -> str:
    return (f"{cpu_name()} ({cpu_flags()}), {cores()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, load average {load_average()}")


# -- worker processes -------------------------------------------------------------------------------------
# A benchmark can run each candidate in its own process (a different environment, say, or to keep TensorFlow
# and torch apart) and still interleave them: the coordinator sends one command line at a time and reads one
# JSON reply; protocol lines start with PROTOCOL so that anything else a library prints is ignored.

PROTOCOL = "@@bench "


def reply(obj) -> None:
    """Worker side: send one JSON reply to the coordinator."""
    print(PROTOCOL + json.dumps(obj), flush=True)


def serve(handlers: dict) -> None:
    """Worker side: answer command lines from stdin with handlers[command]() until 'quit' or end of input."""
    for line in sys.stdin:
        command = line.strip()
        if command == "quit" or not command:
            break
        reply(handlers[command]())
    reply({"vmhwm_kib": vmhwm_kib()})


def vmhwm_kib() -> int:
    """Peak resident memory of this process (VmHWM), KiB; 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Worker:
    """Coordinator side: a worker subprocess, its first reply (`ready`), then one reply per command."""

    def __init__(self, name: str, argv: list, env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, env={**os.environ, **(env or {})})
        self.ready = self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        raise RuntimeError(f"benchmark worker {self.name} exited with code {self.proc.wait()}")

    def call(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> dict:
        """Stop the worker; its last reply (peak memory)."""
        try:
            return self.call("quit")
        finally:
            self.proc.stdin.close()
            self.proc.wait()


# -- data -------------------------------------------------------------------------------------------------


def phantom_samples(folder, count: int, size: int = 512, seed: int = 0):
    """Write `count` synthetic radiographs with Labelme JSON (keras_unet.data.phantom) and return their Samples.

    Masks are rasterised into folder/cache by keras_unet.data.samples exactly as train.py does it."""
    from keras_unet.data.samples import prepare_samples
    from keras_unet.data.phantom import LABELS, write_sample

    folder = Path(folder)
    write_sample(folder / "data", count=count, size=size, seed=seed, overwrite=True)
    return prepare_samples(folder / "data", list(LABELS), cache_dir=folder / "cache", log=None)


def bench_config(folder, image_size: int, base_filters: int, batch_size: int = 8, **overrides):
    """The classic U-Net as a project Config: depth 4, transposed-convolution upsampling, batch norm, BCE loss."""
    from keras_unet.config import Config, ModelConfig
    from keras_unet.data.phantom import LABELS

    values = dict(data=str(Path(folder) / "data"), classes=list(LABELS), image_size=image_size,
                  batch_size=batch_size, loss="bce", precision="float32", cache_dir=str(Path(folder) / "cache"),
                  model=ModelConfig(depth=4, base_filters=base_filters, upsampling="transpose", batch_norm=True))
    values.update(overrides)
    return Config(**values).validate()


# -- arithmetic -------------------------------------------------------------------------------------------


def conv_flops(model, size: int, channels: int = 1) -> int:
    """Floating-point operations (2 per multiply-add) of the Conv2D and Conv2DTranspose layers for one image.

    Counted analytically from each layer's kernel and its input/output shapes at size x size (the model is
    cloned with a fixed-size input so that every shape is known); bias, batch norm and activations left out."""
    import keras

    fixed = keras.models.clone_model(model, input_tensors=keras.Input((size, size, channels)))
    total = 0
    for layer in fixed.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, cin = layer.input.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * cin * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, cin = layer.input.shape
            _, ho, wo, _ = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * ho * wo * kh * kw * (cin // layer.groups) * layer.filters
    return int(total)


def numpy_matmul_gflops(n: int = 2048, reps: int = 5) -> list[float]:
    """GFLOP/s of float32 n x n matrix products in numpy (its BLAS), one figure per repetition after a warm-up."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    return [2.0 * n ** 3 / timed(lambda: a @ b) / 1e9 for _ in range(reps)]


def tf_matmul_gflops(n: int = 2048, reps: int = 5) -> list[float]:
    """GFLOP/s of float32 n x n matrix products in TensorFlow (its CPU kernels), per repetition after a warm-up."""
    import tensorflow as tf

    a = tf.random.stateless_normal((n, n), seed=(0, 1))
    b = tf.random.stateless_normal((n, n), seed=(0, 2))
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1]))
    product().numpy()
    return [2.0 * n ** 3 / timed(lambda: product().numpy()) / 1e9 for _ in range(reps)]
