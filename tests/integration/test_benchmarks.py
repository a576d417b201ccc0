"""The benchmarks' pure helpers: FLOP counting, the PyTorch reference's size, timing, output format, options."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402


def test_conv_flops_by_hand():
    from keras_unet.model.unet import build_unet

    model = build_unet(3, depth=2, base_filters=4)
    # 2 x (output pixels) x (kernel area) x (input channels) x (filters) per convolution at 32 x 32;
    # a 2x2 stride-2 transposed convolution: 2 x (input pixels) x 4 x in x out
    by_hand = sum([
        2 * 32 * 32 * 9 * 1 * 4, 2 * 32 * 32 * 9 * 4 * 4,  # enc0
        2 * 16 * 16 * 9 * 4 * 8, 2 * 16 * 16 * 9 * 8 * 8,  # enc1
        2 * 8 * 8 * 9 * 8 * 16, 2 * 8 * 8 * 9 * 16 * 16,  # bottleneck
        2 * 8 * 8 * 4 * 16 * 8, 2 * 16 * 16 * 9 * 16 * 8, 2 * 16 * 16 * 9 * 8 * 8,  # dec1: up, conv1 (concat), conv2
        2 * 16 * 16 * 4 * 8 * 4, 2 * 32 * 32 * 9 * 8 * 4, 2 * 32 * 32 * 9 * 4 * 4,  # dec0
        2 * 32 * 32 * 1 * 4 * 3,  # 1x1 head
    ])
    assert by_hand == 3_178_496
    assert common.conv_flops(model, 32) == by_hand
    assert common.conv_flops(model, 64) == 4 * by_hand  # every layer scales with the pixel count


def test_torch_reference_has_the_keras_models_parameters():
    pytest.importorskip("torch")
    from keras_unet.model.unet import build_unet
    from train_vs_torch import torch_count, torch_unet, trainable_count

    for depth, base in ((2, 4), (4, 8)):
        keras_model = build_unet(3, depth=depth, base_filters=base)
        reference = torch_unet(1, 3, base, depth)
        assert torch_count(reference) == trainable_count(keras_model)


def test_torch_reference_keeps_the_input_size():
    torch = pytest.importorskip("torch")
    from train_vs_torch import torch_unet

    out = torch_unet(1, 3, base=4, depth=2)(torch.zeros(2, 1, 32, 32))
    assert tuple(out.shape) == (2, 3, 32, 32)


def test_interleave_rotates_the_order_and_uses_own_timings():
    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or 0.25}
    times = common.interleave(candidates, reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert times["b"] == [0.25, 0.25, 0.25]
    assert len(times["a"]) == 3 and all(t >= 0 for t in times["a"])
    assert set(times.cpu) == {"a", "b"} and len(times.cpu["a"]) == 3


def test_report_ends_with_one_ratio_line_each(capsys):
    report = common.Report("test")
    report.line("measurement 1.0 images/s")
    report.ratio("train_vs_torch_256_base32", 1.23456)
    report.ratio("onnx_vs_keras_512_b1", 2.0)
    report.finish()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == ["ratio train_vs_torch_256_base32 1.235", "ratio onnx_vs_keras_512_b1 2.000"]


def test_matmul_peak_is_positive():
    assert all(g > 0 for g in common.numpy_matmul_gflops(n=64, reps=2))


def test_bench_config_is_the_classic_unet_with_bce(tmp_path):
    config = common.bench_config(tmp_path, 256, 64)
    assert (config.loss, config.model.depth, config.model.base_filters, config.model.upsampling) == \
        ("bce", 4, 64, "transpose")
    assert config.model.batch_norm and config.jit_compile == "auto"


def test_quick_options_are_fewer_repetitions_of_the_same_measurements():
    import inference
    import memory
    import pipeline
    import train_vs_torch

    for module in (train_vs_torch, pipeline, inference):
        full, quick = module.parse_args([]), module.parse_args(["--quick"])
        assert quick.reps < full.reps
        assert getattr(quick, "sizes", None) == getattr(full, "sizes", None)
    assert "32" in train_vs_torch.parse_args(["--quick"]).bases.split(",")
    assert memory.parse_args(["--quick"]).size == 512 and memory.parse_args(["--quick"]).batch == 8


def test_bce_loss_by_hand():
    from keras_unet.model.losses import get_loss

    y_true = np.array([[[[1.0], [0.0]]]], dtype="float32")  # (1, 1, 2, 1)
    y_pred = np.array([[[[0.8], [0.4]]]], dtype="float32")
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    assert float(np.mean(get_loss("bce")(y_true, y_pred))) == pytest.approx(expected, rel=1e-5)


def test_jit_compile_setting_is_checked():
    from keras_unet.config import Config
    from keras_unet.errors import ConfigError

    for value in ("auto", True, False):
        Config(jit_compile=value).validate()
    for value in ("yes", 1, None):
        with pytest.raises(ConfigError, match="jit_compile"):
            Config(jit_compile=value).validate()


def test_epoch_start_steps_splits_each_epochs_first_call_and_leaves_out_every_fits_first_epoch():
    from loop_overhead import epoch_start_steps

    calls = [(0, 0, 9.0), (0, 0, 1.0),  # fit 0, epoch 0: tracing, left out
             (0, 1, 1.5), (0, 1, 1.0), (0, 1, 1.1),
             (0, 2, 1.6), (0, 2, 0.9),
             (1, 0, 7.0),  # fit 1 (the refine stage), epoch 0: left out
             (1, 1, 2.5), (1, 1, 2.0)]
    first, rest = epoch_start_steps(calls)
    assert first == [1.5, 1.6, 2.5]
    assert rest == [1.0, 1.1, 0.9, 2.0]
