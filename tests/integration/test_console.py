"""A quiet, informative console: no TensorFlow start-up noise unless --debug, one short line per epoch (a bar within
the epoch on a terminal only), and start-up lines that are not noise still shown."""

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from helpers import FakeTerminal
from keras_unet.train import callbacks
from keras_unet.train.callbacks import EpochLine

NOISE = ("cudart_stub.cc", "Could not find cuda drivers",
         "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
         "failed call to cuInit", "UNKNOWN ERROR (303)")
EPOCH = re.compile(r"epoch (\d+)/(\d+)  loss \d+\.\d{4}  val Dice [01]\.\d{3}( \*|  )  \d+ s"
                   r"(  \(about \d+ (s|min) left\))?")
NO_GPU = shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists()


def train(tmp_path, *extra):
    """python train.py on the bundled sample at 64 px, depth 2; its stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # what a user's shell has
    proc = subprocess.run(
        [sys.executable, "train.py", "--image-size", "64", "--depth", "2", "--base-filters", "4",
         "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_training_prints_no_start_up_noise_and_one_short_line_per_epoch(tmp_path):
    text = train(tmp_path, "--epochs", "2")
    assert [noise for noise in NOISE if noise in text] == []
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, text
    for number, line in enumerate(epochs, 1):
        match = EPOCH.fullmatch(line)
        assert match and match.group(1, 2) == (str(number), "2"), line
        assert len(line) < 100
    assert EPOCH.fullmatch(epochs[0]).group(3) == " *"  # the first epoch is always a new best
    assert "left)" in epochs[0] and "left" not in epochs[1]  # nothing is left after the last epoch
    assert "Epoch 1/2" not in text and "/step" not in text and "val_dice:" not in text  # Keras's own lines are gone
    assert "\r" not in text  # captured, not a terminal: no bar within an epoch
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and {"loss", "val_dice", "val_loss", "dice", "iou"} <= set(header)


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU, reason="the pinned noise lines are those of TensorFlow on a machine without CUDA")
def test_debug_shows_the_start_up_noise(tmp_path):
    text = train(tmp_path, "--epochs", "1", "--debug")
    assert [noise for noise in NOISE if noise not in text] == []


def test_start_up_lines_that_are_not_noise_still_show():
    """quiet_fd2 drops absl's start-up lines written to fd 2 but passes on the rest (a Python warning, an error)."""
    script = ("import os, sys\n"
              "from keras_unet.cli.common import quiet_fd2\n"
              "with quiet_fd2():\n"
              "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to "
              "STDERR\\n')\n"
              "    os.write(2, b'I0000 00:00:1796124649.366924   17383 cudart_stub.cc:31] Could not find cuda\\n')\n"
              "    os.write(2, b'E0000 00:00:1796124656.569020   17383 cuda_platform.cc:52] failed cuInit\\n')\n"
              "    os.write(2, b'F0000 00:00:1796124656.569020   17383 x.cc:1] a fatal check failed\\n')\n"
              "    print('a real problem', file=sys.stderr)\n"
              "print('after', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["F0000 00:00:1796124656.569020   17383 x.cc:1] a fatal check failed",
                                        "a real problem", "after"]


def test_a_failing_tensorflow_import_still_shows_its_error(tmp_path):
    """The import under quiet_fd2 raises: the traceback reaches the console (fd 2 is back when it is printed)."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'half-loaded\\n')\nraise ImportError('libfoo.so')\n")
    script = ("import sys\nfrom keras_unet.cli.common import run_main\n"
              "def main(args):\n    import tensorflow\n"
              "sys.exit(run_main(main, []))\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 1
    assert "half-loaded" in proc.stderr and "ImportError: libfoo.so" in proc.stderr.splitlines()[-1]


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    return now


def run_epochs(line: EpochLine, clock, epochs: int, logs: list[dict], steps: int = 4, seconds: float = 30):
    """Drive line like model.fit would: epochs of steps batches, each epoch taking seconds."""
    line.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
    for epoch, epoch_logs in enumerate(logs):
        line.on_epoch_begin(epoch)
        for batch in range(steps):
            clock[0] += seconds / steps
            line.on_train_batch_end(batch, {"loss": 0.5})
        line.on_test_begin()
        line.on_epoch_end(epoch, epoch_logs)


def test_epoch_lines_into_a_log_and_a_bar_on_a_terminal(clock):
    out, bar = io.StringIO(), FakeTerminal()
    logs = [{"loss": 0.9, "val_dice": 0.5}, {"loss": 0.8, "val_dice": 0.4}, {"loss": 0.7, "val_dice": 0.81234}]
    run_epochs(EpochLine(out=out, bar=bar), clock, 40, logs)
    assert out.getvalue().splitlines() == [
        "epoch 1/40  loss 0.9000  val Dice 0.500 *  30 s  (about 20 min left)",
        "epoch 2/40  loss 0.8000  val Dice 0.400    30 s  (about 19 min left)",
        "epoch 3/40  loss 0.7000  val Dice 0.812 *  30 s  (about 18 min left)"]
    frames = bar.getvalue().split("\r")
    assert "epoch 1/40  [=====               ] step 1/4  loss 0.5000" in frames
    assert "epoch 3/40  [====================] step 4/4  loss 0.5000" in frames
    assert "epoch 2/40  validating" in [frame.rstrip() for frame in frames]
    assert "\n" not in bar.getvalue() and bar.getvalue().endswith("\r")  # the bar blanked before each epoch line


def test_no_bar_off_a_terminal_and_pretraining_shows_blanked_mae(clock):
    out, bar = io.StringIO(), io.StringIO()
    logs = [{"loss": 0.05, "blanked_mae": 0.04}, {"loss": 0.04, "blanked_mae": 0.05}, {"loss": 0.03,
                                                                                         "blanked_mae": 0.03}]
    run_epochs(EpochLine(out=out, bar=bar), clock, 3, logs, seconds=2)
    assert bar.getvalue() == ""
    assert out.getvalue().splitlines() == [
        "epoch 1/3  loss 0.0500  blanked_mae 0.0400 *  2 s  (about 4 s left)",
        "epoch 2/3  loss 0.0400  blanked_mae 0.0500    2 s  (about 2 s left)",  # lower is better here
        "epoch 3/3  loss 0.0300  blanked_mae 0.0300 *  2 s"]


def test_a_resumed_run_marks_only_what_beats_the_earlier_best(clock):
    out = io.StringIO()
    run_epochs(EpochLine(best=0.7, out=out, bar=io.StringIO()), clock, 5,
               [{"loss": 0.5, "val_dice": 0.6}, {"loss": 0.4, "val_dice": 0.75}])
    assert [line.split("  ")[2] for line in out.getvalue().splitlines()] == ["val Dice 0.600", "val Dice 0.750 *"]


def test_time_left_leaves_out_the_first_epoch_which_also_traces_the_graph(clock):
    out = io.StringIO()
    line = EpochLine(out=out, bar=io.StringIO())
    line.set_params({"epochs": 10, "steps": 1, "verbose": 0})
    for epoch, seconds in enumerate((100, 30, 30)):
        line.on_epoch_begin(epoch)
        clock[0] += seconds
        line.on_epoch_end(epoch, {"loss": 1.0, "val_dice": 0.5})
    assert [text.split("  ")[-1] for text in out.getvalue().splitlines()] == [
        "(about 15 min left)", "(about 4 min left)", "(about 4 min left)"]  # 9 x 100 s, 8 x 30 s, 7 x 30 s
