"""Speed choices of a run, each with its reason: XLA for the training step ("auto": only when the planned steps
win back what compiling costs on this machine) and the float precision ("auto": bf16 only where the CPU has it).

The decisions are pure functions of their inputs (decide_jit, precision_choice); the inputs come from the config,
the CPU's flags and the measurements earlier fits left in the speed cache (speed.json beside the masks cache)."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from keras_unet.data.cache import default_cache_root
from keras_unet.errors import KerasUnetError
from keras_unet.io.files import write_json_atomic

SPEED_CACHE = "speed.json"
SPEED_FORMAT = 2  # 2: steps measured with fused batch normalisation (model/fused.py); older figures are stale


@dataclass(frozen=True)
class Choice:
    """A resolved setting and why (config.json keeps both: {"value": ..., "reason": ...})."""

    value: object
    reason: str

    def as_dict(self) -> dict:
        """The JSON form recorded in config.json."""
        return {"value": self.value, "reason": self.reason}


# -- the CPU ----------------------------------------------------------------------------------------------

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 arithmetic (oneDNN uses)


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo ('' where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str) -> frozenset:
    """The feature flags of the first processor in /proc/cpuinfo text (x86 `flags`, Arm `Features`)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str) -> str:
    """The first processor's model name in /proc/cpuinfo text ('' when absent)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name":
            return " ".join(value.split())
    return ""


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- precision --------------------------------------------------------------------------------------------

# "auto" picks mixed_bfloat16 on a bf16 CPU because the JSRT recipe showed it costs no accuracy (issue 23: clavicle
# Dice within 0.005 of float32 on held-back images; docs/experiments.md, "bf16 on the JSRT recipe") at 1.45-1.65x
# float32's training images/s (benchmarks/README.md). False would make it an explicit opt-in again.
BF16_VALIDATED = True


def precision_choice(precision: str, gpus: int, flags, bf16_validated: bool = BF16_VALIDATED) -> Choice:
    """The dtype policy for `precision` ('auto' or a policy name) on a machine with `gpus` GPUs and these CPU flags."""
    bf16 = sorted(set(flags) & set(BF16_FLAGS))
    if precision != "auto":
        if precision == "mixed_bfloat16" and not gpus and not bf16:
            return Choice(precision, "set in the config; this CPU has no bf16 instructions (avx512_bf16, "
                                     "amx_bf16): bf16 is emulated there and slower than float32")
        return Choice(precision, "set in the config")
    if gpus:
        return Choice("mixed_float16", f"auto: {gpus} GPU(s) visible")
    if not bf16:
        return Choice("float32", "auto: no GPU, and the CPU has no bf16 instructions (avx512_bf16, amx_bf16)")
    if not bf16_validated:
        return Choice("float32", f"auto: the CPU has {', '.join(bf16)}, but bf16 is not validated on the JSRT "
                                 "recipe yet (--precision mixed_bfloat16 opts in)")
    return Choice("mixed_bfloat16", f"auto: no GPU, the CPU has {', '.join(bf16)} (bf16 matched float32's Dice on "
                                    "the JSRT recipe)")


# -- XLA: the figures "auto" decides from -------------------------------------------------------------------
# Measured with benchmarks/jit_payoff.py and benchmarks/train_vs_torch.py on AMD EPYC (avx2, fma), 2 cores,
# TensorFlow 2.21 (benchmarks/README.md); each constant is taken on the side that keeps XLA off when in doubt.
XLA_STEP_SAVING = 0.15  # share of a plain CPU step's seconds XLA saves on an AVX2 CPU (measured 19-24%)
# On AVX-512 CPUs TensorFlow runs oneDNN's kernels, and XLA's step was measured slower than the plain one:
# -18% / -17% at 256 px base 32 / 64 float32 and -66% / -73% in mixed_bfloat16 (AMD EPYC Zen 4, 2 cores)
XLA_STEP_SAVING_AVX512 = -0.17
XLA_STEP_SAVING_BF16 = -0.66  # mixed_bfloat16 on a CPU: oneDNN's bf16 convolutions, which XLA does not use
# ...for a U-Net of at least this many forward convolution GFLOP per image: XLA measured 10% slower per step at
# 128 px base 12 (0.85 GFLOP) and 163% slower at 64 px base 4, 19-24% faster at 256 px base 32 and 64 (27, 109);
# whole runs: the small-data recipe (128 px base 12) slower with XLA, the JSRT refine stage (192 px base 16, 3.39)
# 9% faster (10 epochs: 502 s against 552 s of fit), so the floor sits between them
XLA_MIN_GFLOP = 3.0
XLA_COMPILE_SECONDS = 45.0  # XLA's extra first-epoch seconds, train and test functions (measured 17-37 s)
PLAIN_CONV_FLOPS_PER_CORE = 40e9  # FLOP/s per core the plain step's convolutions reach (measured 29-37e9)
PLAIN_ELEMENT_SECONDS_PER_CORE = 2e-9  # seconds per core per activation value (batch norm, ReLU, ...; ~3e-9)
PAYBACK_MARGIN = 2.0  # XLA only when the seconds it saves are at least twice the seconds it costs


@dataclass(frozen=True)
class JitInputs:
    """What decide_jit weighs: the planned steps, a plain step's seconds, XLA's saving and its compile cost."""

    planned_steps: int
    plain_step_seconds: float
    step_saving: float  # share of a plain step's seconds XLA saves (0 or less: none known or none)
    compile_seconds: float
    source: str  # where the figures come from, for the reason


def decide_jit(inputs: JitInputs, margin: float = PAYBACK_MARGIN) -> Choice:
    """XLA on when planned steps x step seconds x saving >= margin x compile seconds, else off."""
    saved = inputs.planned_steps * inputs.plain_step_seconds * max(inputs.step_saving, 0.0)
    figures = (f"{inputs.planned_steps} planned steps x {inputs.plain_step_seconds:.3g} s x "
               f"{max(inputs.step_saving, 0.0):.0%} saved = {saved:.0f} s")
    if inputs.step_saving <= 0:
        return Choice(False, f"auto: no step saving expected from XLA ({inputs.source})")
    if saved >= margin * inputs.compile_seconds:
        return Choice(True, f"auto: {figures} >= {margin:g} x {inputs.compile_seconds:.0f} s to compile "
                            f"({inputs.source})")
    return Choice(False, f"auto: {figures} < {margin:g} x {inputs.compile_seconds:.0f} s to compile "
                         f"({inputs.source})")


def unet_work(config) -> tuple[float, float]:
    """(convolution FLOPs, activation values) of one training image's forward pass through the config's U-Net."""
    size, depth, base = config.image_size, config.model.depth, config.model.base_filters
    flops = values = 0.0

    def conv(pixels, cin, cout, taps=9):
        nonlocal flops, values
        flops += 2.0 * pixels * taps * cin * cout
        values += pixels * cout

    cin = 1
    for level in range(depth + 1):  # encoder levels, then the bottleneck
        pixels, width = (size / 2 ** level) ** 2, base * 2 ** level
        conv(pixels, cin, width)
        conv(pixels, width, width)
        cin = width
    for level in reversed(range(depth)):
        pixels, width = (size / 2 ** level) ** 2, base * 2 ** level
        conv(pixels, width * 2, width, taps=1)  # 2x2 stride-2 transposed, or resize + 1x1: one tap per output pixel
        conv(pixels, width * 2, width)
        conv(pixels, width, width)
    conv(size * size, base, len(config.outputs()), taps=1)
    return flops, values


def estimated_step_seconds(config, cores: int) -> float:
    """Seconds of one plain (no XLA) training step on `cores` cores, estimated from the U-Net's work.

    Forward and backward: 3 x the forward convolutions and 6 passes over the activations, at the per-core rates
    measured on an AVX2 EPYC taken high and scaled with the cores (so the estimate errs short: XLA off)."""
    flops, values = unet_work(config)
    batch = config.batch_size
    return batch * (3 * flops / PLAIN_CONV_FLOPS_PER_CORE + 6 * values * PLAIN_ELEMENT_SECONDS_PER_CORE) / cores


def machine_key(cpuinfo: str, cores: int) -> str:
    """The speed cache's key for this machine: CPU model, its vector flags, cores, TensorFlow version."""
    import tensorflow as tf

    vector = sorted(f for f in cpu_flags(cpuinfo) if f.startswith(("avx", "amx", "fma", "sse4")))
    return f"{cpu_model(cpuinfo) or 'unknown CPU'} [{' '.join(vector)}] x{cores} tf{tf.__version__}"


def shape_key(config) -> str:
    """The speed cache's key for a model shape and batch."""
    m = config.model
    return (f"{config.image_size}px b{config.batch_size} d{m.depth} f{m.base_filters} {m.upsampling} "
            f"bn{int(m.batch_norm)} c{len(config.outputs())} {config.precision}")


def speed_cache_path(cache_dir: str = "") -> Path:
    """speed.json in the cache folder (the config's cache_dir, else the default masks cache root)."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_root()) / SPEED_CACHE


def read_speed_cache(path: Path) -> dict:
    """The speed cache's entries ({machine: {shape: {"plain"|"xla": figures}}}; empty when absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != SPEED_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def jit_inputs(config, planned_steps: int, measured: dict, flags, cores: int) -> JitInputs:
    """decide_jit's inputs: this machine's measured figures for the shape where the cache has them, else estimates.

    measured: the speed cache's entry for this machine and shape ({"plain": {...}, "xla": {...}}, or {})."""
    plain, xla = measured.get("plain") or {}, measured.get("xla") or {}
    step = plain.get("step_seconds") or estimated_step_seconds(config, cores)
    avx2_only = "avx2" in flags and "avx512f" not in flags
    if plain.get("step_seconds") and xla.get("step_seconds"):
        saving, saving_from = 1.0 - xla["step_seconds"] / plain["step_seconds"], "measured"
    elif config.precision == "mixed_bfloat16":
        saving, saving_from = XLA_STEP_SAVING_BF16, "bf16 constant: XLA measured slower than oneDNN's bf16 step"
    elif avx2_only and unet_work(config)[0] < XLA_MIN_GFLOP * 1e9:
        saving, saving_from = 0.0, f"a U-Net under {XLA_MIN_GFLOP:g} GFLOP an image: XLA measured slower there"
    elif avx2_only:
        saving, saving_from = XLA_STEP_SAVING, "AVX2 constant"
    elif "avx512f" in flags:
        saving, saving_from = XLA_STEP_SAVING_AVX512, "AVX-512 constant: XLA measured slower than oneDNN's step"
    else:  # neither x86 family: unknown
        saving, saving_from = 0.0, "not measured on this CPU: train once with jit_compile true to measure it"
    if xla.get("startup_seconds") is not None:
        compile_seconds = max(xla["startup_seconds"] - plain.get("startup_seconds", 0.0), 1.0)
        compile_from = "measured"
    else:
        compile_seconds, compile_from = XLA_COMPILE_SECONDS, "constant"
    source = (f"step {'measured' if plain.get('step_seconds') else 'estimated'}, saving {saving_from}, "
              f"compile {compile_from}")
    return JitInputs(planned_steps, step, saving, compile_seconds, source)


def resolve_jit_compile(config, steps_per_epoch: int, cpuinfo: str | None = None, cores: int | None = None,
                        cache: Path | None = None) -> Choice:
    """jit_compile as the stage will use it: the config's true/false, or "auto" decided for its planned steps."""
    if isinstance(config.jit_compile, bool):
        return Choice(config.jit_compile, "set in the config")
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    cores = cpu_cores() if cores is None else cores
    if _gpu_visible():
        return Choice(True, "auto: a GPU is visible (Keras's default there)")
    entries = read_speed_cache(speed_cache_path(config.cache_dir) if cache is None else cache)
    measured = entries.get(machine_key(cpuinfo, cores), {}).get(shape_key(config), {})
    planned = config.epochs * steps_per_epoch
    return decide_jit(jit_inputs(config, planned, measured, cpu_flags(cpuinfo), cores))


def _gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def fit_figures(epoch_seconds, train_seconds, steps_per_epoch: int) -> dict | None:
    """A fit's measured figures: seconds per training step (median over the epochs after the first) and its
    start-up cost (the first epoch over the median of the others); None with fewer than 2 epochs."""
    if len(epoch_seconds) < 2 or len(train_seconds) < 2 or steps_per_epoch < 1:
        return None
    later = statistics.median(epoch_seconds[1:])
    return {"step_seconds": statistics.median(train_seconds[1:]) / steps_per_epoch,
            "startup_seconds": max(epoch_seconds[0] - later, 0.0)}


def record_fit(config, jit: bool, figures: dict | None, cpuinfo: str | None = None, cores: int | None = None,
               cache: Path | None = None) -> None:
    """Keep a fit's measured figures in the speed cache, under this machine, the shape and the mode."""
    if not figures or not all(math.isfinite(v) for v in figures.values()):
        return
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    cores = cpu_cores() if cores is None else cores
    path = speed_cache_path(config.cache_dir) if cache is None else cache
    entries = read_speed_cache(path)
    shapes = entries.setdefault(machine_key(cpuinfo, cores), {})
    shapes.setdefault(shape_key(config), {})["xla" if jit else "plain"] = {k: round(v, 4) for k, v in figures.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"format": SPEED_FORMAT, "entries": entries})
    except (OSError, KerasUnetError):
        pass  # a cache that cannot be written only costs the next run its measurement
