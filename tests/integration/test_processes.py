"""Real processes at once and killed: two trainings filling one masks cache, a second training on a busy --out, and
predict.py killed (SIGKILL) in the middle of a folder then run again with the same command. All slow."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from helpers import tiny_run  # noqa: F401 (fixture)
from keras_unet.config import Config
from keras_unet.data.cache import IMAGES_FOLDER, cache_folder, read_index
from keras_unet.data.samples import prepare_samples
from keras_unet.infer.load import load_predictor
from keras_unet.infer.predict import predict_folder
from keras_unet.infer.predictor import postprocess_settings
from keras_unet.infer.ranking import rank_folder
from keras_unet.io import images
from keras_unet.run_folder import PROGRESS_FILE, RUN_LOCK, SUMMARY_FILE
from labelme_factory import sample_copy, write_image

pytestmark = pytest.mark.slow
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _train(data, out, cache, epochs):
    command = [sys.executable, "train.py", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
               "--image-size", "32", "--depth", "2", "--base-filters", "4", "--batch-size", "2",
               "--epochs", str(epochs)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait(condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_two_trainings_share_a_cache_and_a_third_on_a_busy_out_is_refused(tmp_path):
    data, cache = sample_copy(tmp_path / "data"), tmp_path / "cache"
    long = _train(data, tmp_path / "a", cache, epochs=500)  # still training when the third one arrives
    short = _train(data, tmp_path / "b", cache, epochs=1)
    try:
        _wait(lambda: (tmp_path / "a" / RUN_LOCK).exists() or long.poll() is not None)
        assert long.poll() is None, long.communicate()[1][-2000:]
        third = _train(data, tmp_path / "a", cache, epochs=1)
        _, err = third.communicate(timeout=300)
        assert third.returncode == 2 and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith(
            f"error: {tmp_path / 'a'}: another training is writing this run folder (process {long.pid} on host ")
        out, err = short.communicate(timeout=300)
        assert short.returncode == 0, err[-2000:]
    finally:
        for proc in (long, short):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # the shared cache holds exactly what one process alone makes (read as it is, not regenerated), no temporary file
    classes, width = (data / "labels.txt").read_text().split(), Config().line_width
    alone = prepare_samples(data, classes, cache_dir=tmp_path / "alone", line_width=width, log=None)
    folder = cache_folder(data, classes, width, cache)
    assert sorted(read_index(folder, classes, width)) == sorted(s.stem for s in alone)
    for sample in alone:
        for mine, name in zip([sample.image_path, *sample.mask_paths], [IMAGES_FOLDER, *classes]):
            assert np.array_equal(images.read_image(folder / name / f"{sample.stem}.png"), images.read_image(mine))
    assert not [p for p in cache.rglob("*.tmp")]


@pytest.mark.parametrize("rank", [False, True], ids=["predict", "rank"])
def test_predict_killed_mid_folder_then_rerun_finishes_without_redoing(tiny_run, tmp_path, rank):  # noqa: F811
    rng = np.random.default_rng(5)
    count = 24
    for i in range(count):
        write_image(tmp_path / "in" / f"img_{i:02d}.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    out = tmp_path / "out"
    command = [sys.executable, "predict.py", "--model", str(tiny_run / "model.keras"), "--input", str(tmp_path / "in"),
               "--out", str(out), "--no-postprocess", *(["--rank", "--top", "3"] if rank else [])]

    def lines():
        try:
            return (out / PROGRESS_FILE).read_bytes().count(b"\n")
        except OSError:
            return 0

    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        _wait(lambda: lines() >= 6 or proc.poll() is not None)  # the settings line and at least 5 images
        assert proc.poll() is None, "predict.py ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / SUMMARY_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == count and {row["status"] for row in rows} == {"done"}
    assert not list(out.rglob("*.tmp"))
    reference = tmp_path / "reference"
    predictor = load_predictor(tiny_run / "model.keras")
    settings = postprocess_settings(predictor.config.postprocess, enabled=False)
    quiet = dict(progress=False, log=lambda _: None)
    if rank:
        earlier = int(done.stdout.split("image(s) ranked (")[1].split(" scored by an earlier run")[0])
        assert 5 <= earlier < count, done.stdout
        rank_folder(predictor, tmp_path / "in", reference, settings, top=3, **quiet)
        assert (out / "ranking.csv").read_text() == (reference / "ranking.csv").read_text()
        assert sorted(p.name for p in out.glob("*.json")) == sorted(p.name for p in reference.glob("*.json"))
        return
    last = done.stdout.strip().splitlines()[-1]
    written, earlier = int(last.split(" image(s)")[0]), int(last.split("; ")[1].split(" done by")[0])
    assert written + earlier == count and earlier >= 5 and written >= 1, last
    predict_folder(predictor, tmp_path / "in", reference, settings, **quiet)
    for path in sorted(reference.rglob("*.png")):
        assert (out / path.relative_to(reference)).read_bytes() == path.read_bytes(), path
