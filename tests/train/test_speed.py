"""The speed choices: CPU flags read from /proc/cpuinfo text, the precision "auto" picks, when XLA pays, the speed
cache, and what a run records in config.json."""

import dataclasses
import json

import pytest

from keras_unet.config import Config, ModelConfig, config_from_dict, load_config
from keras_unet.errors import ConfigError
from keras_unet.train import speed
from keras_unet.train.callbacks import EpochClock
from keras_unet.train.speed import Choice, JitInputs, decide_jit

AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse4_1 sse4_2 avx avx2 fma bmi2
processor\t: 1
flags\t\t: fpu avx512_bf16
"""
ZEN4 = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\nCPU implementer\t: 0x41\n"


def test_cpu_flags_are_the_first_processors_flags_line():
    assert speed.cpu_flags(AVX2) == {"fpu", "vme", "sse4_1", "sse4_2", "avx", "avx2", "fma", "bmi2"}  # not cpu 1
    assert "avx512_bf16" in speed.cpu_flags(ZEN4) and "amx_bf16" in speed.cpu_flags(SAPPHIRE)
    assert speed.cpu_flags(ARM) == {"fp", "asimd", "bf16", "sve"}
    assert speed.cpu_flags("") == frozenset() and speed.cpu_flags("flags without a colon") == frozenset()
    assert speed.cpu_model(AVX2) == "AMD EPYC 7B13 64-Core Processor" and speed.cpu_model(ARM) == ""


@pytest.mark.parametrize("cpuinfo, validated, expected, words", [
    (AVX2, False, "float32", "no bf16 instructions"),
    (AVX2, True, "float32", "no bf16 instructions"),
    (ZEN4, False, "float32", "avx512_bf16, but bf16 is not validated on the JSRT recipe yet"),
    (SAPPHIRE, False, "float32", "amx_bf16, but bf16 is not validated"),
    (ZEN4, True, "mixed_bfloat16", "the CPU has avx512_bf16"),
    (SAPPHIRE, True, "mixed_bfloat16", "the CPU has amx_bf16"),
    (ARM, True, "float32", "no bf16 instructions"),  # Arm's bf16 is not what oneDNN's x86 kernels use
])
def test_auto_precision_picks_bf16_only_on_a_bf16_cpu_once_validated(cpuinfo, validated, expected, words):
    choice = speed.precision_choice("auto", 0, speed.cpu_flags(cpuinfo), bf16_validated=validated)
    assert choice.value == expected and words in choice.reason


def test_auto_precision_today_is_bf16_on_a_bf16_cpu_and_float32_elsewhere():
    assert speed.BF16_VALIDATED is True  # the JSRT recipe's float32 vs bf16 Dice (issue 23, docs/experiments.md)
    assert speed.precision_choice("auto", 0, speed.cpu_flags(ZEN4)).value == "mixed_bfloat16"
    assert speed.precision_choice("auto", 0, speed.cpu_flags(AVX2)).value == "float32"


def test_a_gpu_or_an_explicit_policy_wins_over_the_cpu_flags():
    assert speed.precision_choice("auto", 1, speed.cpu_flags(ZEN4)) == Choice("mixed_float16", "auto: 1 GPU(s) visible")
    assert speed.precision_choice("float32", 0, speed.cpu_flags(ZEN4)) == Choice("float32", "set in the config")
    assert speed.precision_choice("mixed_bfloat16", 0, speed.cpu_flags(ZEN4)).reason == "set in the config"
    emulated = speed.precision_choice("mixed_bfloat16", 0, speed.cpu_flags(AVX2))
    assert emulated.value == "mixed_bfloat16" and "emulated there and slower than float32" in emulated.reason


def test_xla_is_on_exactly_when_the_saved_seconds_reach_twice_the_compile_seconds():
    # 100 steps x 1 s x 20% = 20 s saved against 2 x 10 s: on; one step fewer: 19.8 s, off
    on = decide_jit(JitInputs(100, 1.0, 0.2, 10.0, "test"))
    off = decide_jit(JitInputs(99, 1.0, 0.2, 10.0, "test"))
    assert on.value is True and off.value is False
    assert on.reason == "auto: 100 planned steps x 1 s x 20% saved = 20 s >= 2 x 10 s to compile (test)"
    assert "= 20 s < 2 x 10 s" in off.reason
    assert decide_jit(JitInputs(10 ** 6, 5.0, 0.0, 1.0, "x")).value is False  # no known saving: never on
    assert decide_jit(JitInputs(10 ** 6, 5.0, -0.1, 1.0, "x")).value is False  # measured slower: off


def test_unet_work_of_a_tiny_unet_by_hand():
    config = Config(classes=["a"], image_size=4, model=ModelConfig(depth=1, base_filters=2))
    # 4x4 conv 1->2, 2->2; 2x2 conv 2->4, 4->4; up 4->2 (one tap per output pixel); 4x4 conv 4->2, 2->2; 1x1 2->1
    flops = 2 * (16 * 9 * 2 + 16 * 9 * 4 + 4 * 9 * 8 + 4 * 9 * 16 + 16 * 8 + 16 * 9 * 8 + 16 * 9 * 4 + 16 * 2)
    values = 32 + 32 + 16 + 16 + 32 + 32 + 32 + 16
    assert speed.unet_work(config) == (flops, values)


def jsrt_first_stage():
    return load_config("configs/jsrt_clavicles.yaml")


@pytest.mark.parametrize("name, config, steps, expected", [
    ("the tests' tiny run", Config(classes=list("abc"), image_size=64, batch_size=2, epochs=2,
                                   model=ModelConfig(depth=2, base_filters=4)), 2, False),
    ("the bundled sample", Config(classes=list("abc")), 4, False),
    ("the JSRT recipe, first stage (104 images)", "jsrt", 13, True),
    ("the JSRT recipe, refine stage (208 crops; 192 px, 3.39 GFLOP an image)", "jsrt_refine", 26, True),
    ("the small-data recipe's refine stage (400 epochs at 128 px)", "small_refine", 7, False),
])
def test_auto_xla_is_off_for_short_runs_and_small_unets_and_on_for_the_jsrt_stages_on_an_avx2_cpu(
        tmp_path, monkeypatch, name, config, steps, expected):
    monkeypatch.chdir(speed.Path(__file__).resolve().parents[2])
    if config == "jsrt":
        config = jsrt_first_stage()
    elif config == "jsrt_refine":
        config = jsrt_first_stage().refine_stage()
    elif config == "small_refine":
        config = load_config("configs/small_data.yaml").refine_stage()
    config.jit_compile = "auto"
    choice = speed.resolve_jit_compile(config, steps, cpuinfo=AVX2, cores=2, cache=tmp_path / "speed.json")
    assert choice.value is expected, (name, choice.reason)
    # on an AVX-512 CPU (oneDNN kernels, where XLA's step was measured slower) and in bf16 it stays off
    other = speed.resolve_jit_compile(config, steps, cpuinfo=ZEN4, cores=2, cache=tmp_path / "speed.json")
    assert other.value is False and "AVX-512 constant" in other.reason
    bf16 = dataclasses.replace(config, precision="mixed_bfloat16")
    other = speed.resolve_jit_compile(bf16, steps, cpuinfo=AVX2, cores=2, cache=tmp_path / "speed.json")
    assert other.value is False and "bf16 constant" in other.reason


def test_auto_xla_is_unknown_and_off_on_a_cpu_of_neither_x86_family(tmp_path):
    choice = speed.resolve_jit_compile(Config(jit_compile="auto"), 10 ** 6, cpuinfo=ARM, cores=2,
                                       cache=tmp_path / "speed.json")
    assert choice.value is False and "train once with jit_compile true" in choice.reason


def test_jit_compile_set_in_the_config_is_kept():
    assert speed.resolve_jit_compile(Config(jit_compile=True), 1) == Choice(True, "set in the config")
    assert speed.resolve_jit_compile(Config(jit_compile=False), 10 ** 6) == Choice(False, "set in the config")


def test_fit_figures_by_hand():
    figures = speed.fit_figures([10.0, 2.0, 3.0, 2.5], [9.0, 1.5, 2.0, 1.8], 2)
    assert figures == pytest.approx({"step_seconds": 0.9, "startup_seconds": 7.5})
    assert speed.fit_figures([10.0], [9.0], 2) is None  # one epoch: nothing to compare the first with


def test_measured_figures_in_the_speed_cache_replace_the_constants(tmp_path):
    cache = tmp_path / "speed.json"
    config = Config(classes=list("abc"), epochs=10)
    speed.record_fit(config, False, {"step_seconds": 2.0, "startup_seconds": 5.0}, cpuinfo=AVX2, cores=2, cache=cache)
    speed.record_fit(config, True, {"step_seconds": 1.5, "startup_seconds": 25.0}, cpuinfo=AVX2, cores=2, cache=cache)
    entries = speed.read_speed_cache(cache)
    (machine,) = entries
    assert machine == "AMD EPYC 7B13 64-Core Processor [avx avx2 fma sse4_1 sse4_2] x2 tf" + __import__(
        "tensorflow").__version__
    # 10 epochs x 4 steps x 2 s x 25% = 20 s saved against 2 x (25 - 5) s: off; 20 epochs: 40 s, on
    choice = speed.resolve_jit_compile(config, 4, cpuinfo=AVX2, cores=2, cache=cache)
    assert choice.value is False and "(step measured, saving measured, compile measured)" in choice.reason
    config.epochs = 20
    assert speed.resolve_jit_compile(config, 4, cpuinfo=AVX2, cores=2, cache=cache).value is True
    # another machine or shape has its own entry
    assert "step estimated" in speed.resolve_jit_compile(config, 4, cpuinfo=AVX2, cores=4, cache=cache).reason
    cache.write_text("not json")
    assert speed.read_speed_cache(cache) == {}


def test_epoch_clock_splits_training_from_validation():
    now = iter([0.0, 3.0, 4.0, 10.0, 12.0])
    clock = EpochClock(clock=lambda: next(now))
    clock.on_epoch_begin(0)
    clock.on_test_begin()
    clock.on_epoch_end(0)
    clock.on_epoch_begin(1)
    clock.on_epoch_end(1)  # no validation: all of it training
    assert clock.epochs == [4.0, 2.0] and clock.train == [3.0, 2.0]


def test_config_json_keeps_the_resolved_choices_and_loads(tmp_path):
    config = Config(jit_compile_resolved={"value": False, "reason": "auto: ..."},
                    precision_resolved={"value": "float32", "reason": "auto: ..."})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert load_config(path).jit_compile_resolved == {"value": False, "reason": "auto: ..."}
    older = config.to_dict()
    del older["jit_compile_resolved"], older["precision_resolved"]  # a run folder from before: still loads
    assert config_from_dict(older).precision_resolved == {}
    with pytest.raises(ConfigError, match="jit_compile_resolved must be a mapping"):
        Config(jit_compile_resolved="yes").validate()


def test_backups_take_at_most_their_budget_of_the_training_time(tmp_path, monkeypatch):
    from keras_unet.train.callbacks import SafeBackup

    now = [0.0]
    backup = SafeBackup(tmp_path / "backup", budget=0.25, clock=lambda: now[0])
    saved = []

    def save(epoch, logs=None):  # Keras's backup, standing in: 1 s of saving
        saved.append(epoch)
        now[0] += 1.0

    monkeypatch.setattr(type(backup).__mro__[1], "on_epoch_end", lambda self, epoch, logs=None: save(epoch))
    for epoch in range(8):
        now[0] += 1.0  # an epoch of 1 s of training
        backup.on_epoch_end(epoch, {"loss": 0.5})
    # a 1 s backup is allowed once 4 s passed since the last one ended: epochs 0, 4 (t = 2, 7)... by hand:
    # t=2 save(0) ends 2; e1 t=3 (1 s), e2 t=4, e3 t=5, e4 t=6: 4 s >= 1 / 0.25 -> save(4) ends 7; e5..e7 t=8..10 < 11
    assert saved == [0, 4]
    backup.on_epoch_end(8, {"loss": float("nan")})
    assert saved == [0, 4]  # a diverged epoch is never backed up


def test_tensorboard_logging_once_an_epoch_loses_its_batch_hook(tmp_path):
    import keras

    from keras_unet.train.callbacks import epoch_summaries

    quiet = epoch_summaries(keras.callbacks.TensorBoard(str(tmp_path), write_graph=False, profile_batch=0))
    assert quiet.on_train_batch_end(0, {"loss": 1.0}) is None and quiet.on_train_batch_end.__name__ == "_nothing"
    for board in (keras.callbacks.TensorBoard(str(tmp_path), update_freq="batch", write_graph=False),
                  keras.callbacks.TensorBoard(str(tmp_path), write_graph=False, profile_batch=2)):
        assert epoch_summaries(board).on_train_batch_end.__name__ == "on_train_batch_end"  # still writes or profiles
    other = keras.callbacks.Callback()
    assert epoch_summaries(other) is other
