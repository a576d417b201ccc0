"""A real `python train.py` killed (SIGKILL) at several points and rerun: the run ends complete and consistent."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import pytest

from conftest import REPO, SAMPLE_DIR

EPOCHS = 4


def _data(folder):
    folder.mkdir()
    for json_path in sorted(SAMPLE_DIR.glob("*.json"))[:6]:
        shutil.copy(json_path, folder)
        shutil.copy(json_path.with_suffix(".png"), folder)
    shutil.copy(SAMPLE_DIR / "labels.txt", folder)
    return folder


def _command(data, out, cache):
    return [sys.executable, "train.py", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
            "--image-size", "64", "--depth", "2", "--base-filters", "4", "--epochs", str(EPOCHS),
            "--batch-size", "2"]


def _lines(path):
    try:
        return path.read_text().count("\n")
    except OSError:
        return 0


def _run_until(command, ready, timeout=240):
    """Start command; SIGKILL it as soon as ready() is true. Returns True when it was killed, False if it ended."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        assert proc.poll() is not None, "train.py did not finish in time"
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _epochs(out):
    with (out / "history.csv").open(newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _loads(path):
    model = keras.saving.load_model(path, safe_mode=True)
    assert model.output_shape[-1] == 3


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_finishes_the_planned_epochs(tmp_path):
    data, out, cache = _data(tmp_path / "data"), tmp_path / "run", tmp_path / "cache"
    command = _command(data, out, cache)
    kill_points = [
        lambda: (out / "config.json").exists(),  # settings written, training not started
        lambda: (out / "model.keras").exists(),  # the first checkpoint has just appeared
        lambda: _lines(out / "history.csv") >= 2,  # mid-epoch, one history row written
        lambda: _lines(out / "history.csv") >= 4,  # a later epoch
    ]
    killed = 0
    for ready in kill_points:
        if _run_until(command, ready):
            killed += 1
            if (out / "model.keras").exists():
                _loads(out / "model.keras")
            if (out / "history.csv").exists():
                assert _epochs(out) == list(range(len(_epochs(out)))), "gap or repeat after a kill"
    assert killed >= 2, "train.py finished before it could be killed"
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _epochs(out) == list(range(EPOCHS))
    assert (out / "metrics.json").is_file() and not (out / "backup").exists()
    _loads(out / "model.keras")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr  # a finished run is never redone
