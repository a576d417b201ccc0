"""A full disk: the command stops with one line naming the folder and the space the write needed, leaves no temporary
file, keeps every earlier complete file as it was, and the same command resumes once space is freed.

The disk is a small tmpfs the test mounts itself (as root, where mounting is allowed); elsewhere the one atomic-write
path (os.replace in io.files.atomic_path) is made to fail with ENOSPC once the allowance is used up."""

import errno
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest

from helpers import identity_predictor
from keras_unet.cli.common import run_main
from keras_unet.data.samples import prepare_samples
from keras_unet.infer import predict
from keras_unet.io import files, images
from keras_unet.io.files import DiskFullError, build_folder, write_bytes_atomic
from labelme_factory import document, shape, write_image, write_json

LINE = re.compile(r"^(?P<folder>\S+): no space left on the disk: writing (?P<name>\S+) needed (more space|"
                  r"(at least )?[\d.]+ (B|KiB|MiB)), [\d.]+ (B|KiB|MiB) free there; free some space and run the same command "
                  r"again \(finished files are kept as they were\)$")


def _can_mount(where) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


class SmallDisk:
    """A 4 MiB folder that fill() leaves `left` bytes free on and free_up() empties again."""

    def __init__(self, path, real: bool, monkeypatch):
        self.path, self.real, self.allowance = path, real, None
        if not real:
            path.mkdir(parents=True, exist_ok=True)
            replace = os.replace

            def failing_replace(src, dst, *args, **kwargs):
                inside = os.path.abspath(dst).startswith(str(self.path) + os.sep)
                if inside and self.allowance is not None:
                    size = os.path.getsize(src) if os.path.isfile(src) else files.folder_bytes(src)
                    if size > self.allowance:
                        raise OSError(errno.ENOSPC, "No space left on device", str(src))
                    self.allowance -= size
                return replace(src, dst, *args, **kwargs)

            monkeypatch.setattr(os, "replace", failing_replace)

    def fill(self, left: int) -> None:
        if not self.real:
            self.allowance = left
            return
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        with open(self.path / ".filler", "wb") as f:
            f.write(b"\0" * max(0, free - left))

    def free_up(self) -> None:
        self.allowance = None
        (self.path / ".filler").unlink(missing_ok=True)

    def temporaries(self) -> list:
        return [p for p in self.path.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture()
def disk(tmp_path, monkeypatch):
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    real = _can_mount(where)
    yield SmallDisk(where, real, monkeypatch)
    if real:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _noise_images(folder, count, size=(96, 128)):
    rng = np.random.default_rng(0)
    for i in range(count):
        write_image(folder / f"img_{i}.png", rng.integers(0, 256, size, dtype=np.uint8))
    return folder


def _bytes(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_predict_on_a_full_disk_stops_keeps_finished_images_and_resumes(tmp_path, disk, monkeypatch):
    source, predictor = _noise_images(tmp_path / "in", 8), identity_predictor()
    quiet = dict(progress=False, log=lambda _: None)
    predict.predict_folder(predictor, source, tmp_path / "reference", **quiet)
    reference = _bytes(tmp_path / "reference")
    out = disk.path / "out"
    disk.fill(left=3 * sum(len(v) for k, v in reference.items() if "img_0." in k) + 8192)
    with pytest.raises(DiskFullError) as error:
        predict.predict_folder(predictor, source, out, **quiet)
    line = LINE.match(str(error.value))
    assert line and line["folder"].startswith(str(out)), str(error.value)
    assert not disk.temporaries()
    kept = _bytes(out)
    finished = {k.split("/")[-1] for k in kept if k.startswith("overlays/")}
    assert finished and len(finished) < 8  # some images finished before the disk filled, not all
    assert all(reference[k] == v for k, v in kept.items() if k != "summary.csv")  # complete files only
    disk.free_up()
    calls = []
    real = predict.predict_image
    monkeypatch.setattr(predict, "predict_image", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    predict.predict_folder(predictor, source, out, **quiet)
    assert not set(calls) & finished and len(calls) >= 8 - len(finished)
    done = _bytes(out)
    assert {k: v for k, v in done.items() if k != "summary.csv"} == {
        k: v for k, v in reference.items() if k != "summary.csv"}


def test_masks_cache_on_a_full_disk_stops_then_the_same_call_resumes(tmp_path, disk):
    data = _noise_images(tmp_path / "data", 6)
    for i in range(6):
        write_json(data / f"img_{i}.json", document([shape("rib", [[5, 5], [90, 10], [40, 80]])], f"img_{i}.png",
                                                    96, 128))
    quiet = dict(classes=["rib"], log=None)
    reference = prepare_samples(data, cache_dir=tmp_path / "cache", **quiet)
    disk.fill(left=40_000)
    with pytest.raises(DiskFullError) as error:
        prepare_samples(data, cache_dir=disk.path, **quiet)
    assert LINE.match(str(error.value)) and str(disk.path) in str(error.value), str(error.value)
    assert not disk.temporaries()
    disk.free_up()
    samples = prepare_samples(data, cache_dir=disk.path, **quiet)
    for a, b in zip(reference, samples):
        assert np.array_equal(images.read_image(a.image_path), images.read_image(b.image_path))
        assert np.array_equal(images.read_image(a.mask_paths[0]), images.read_image(b.mask_paths[0]))


@pytest.mark.slow  # Keras
def test_a_checkpoint_and_curves_on_a_full_disk_keep_the_earlier_files(tmp_path, disk):
    import keras

    from keras_unet.model.saving import save_for_inference
    from keras_unet.train.history import plot_curves

    run = disk.path / "run"
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    save_for_inference(model, run / "model.keras")
    history = [{"epoch": 0, "loss": 1.0, "val_loss": 1.1, "dice": 0.2, "val_dice": 0.1}]
    plot_curves(history, run / "curves.png")
    before = _bytes(run)
    model.layers[-1].kernel.assign(np.ones((4, 2), np.float32))
    disk.fill(left=0)
    for write, name in [(lambda: save_for_inference(model, run / "model.keras"), "model.keras"),
                        (lambda: plot_curves(history * 2, run / "curves.png"), "curves.png")]:
        with pytest.raises(DiskFullError) as error:
            write()
        line = LINE.match(str(error.value))
        assert line and line["folder"] == str(run) and line["name"] == name, str(error.value)
    assert _bytes(run) == before and not disk.temporaries()
    disk.free_up()
    save_for_inference(model, run / "model.keras")
    assert _bytes(run)["model.keras"] != before["model.keras"]


def test_an_export_folder_on_a_full_disk_keeps_the_earlier_export(disk):
    out = disk.path / "export"
    build_folder(out, lambda tmp: write_bytes_atomic(tmp / "model.tflite", b"first" * 1000))
    disk.fill(left=4096)
    with pytest.raises(DiskFullError) as error:
        build_folder(out, lambda tmp: [write_bytes_atomic(tmp / f"part{i}", os.urandom(50_000)) for i in range(8)])
    line = LINE.match(str(error.value))
    assert line and line["folder"] == str(disk.path) and line["name"] == "export", str(error.value)
    assert _bytes(out) == {"model.tflite": b"first" * 1000}
    assert [p.name for p in disk.path.iterdir() if p.name != ".filler"] == ["export"]  # no temporary folder


def test_a_full_disk_met_by_another_library_is_one_line(tmp_path, capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "logs" / "events.out"))

    assert run_main(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and LINE.match(err.strip()[len("error: "):]), err
    assert err.startswith(f"error: {tmp_path / 'run' / 'logs'}: no space left on the disk: writing events.out ")


def test_a_full_disk_without_a_file_name_names_the_out_folder(tmp_path, capsys):
    def main(argv):
        raise RuntimeError("flush failed") from OSError(errno.ENOSPC, "No space left on device")

    assert run_main(main, ["--data", "d", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'run'}: no space left on the disk (flush failed); free "
                                       "some space and run the same command again (finished files are kept as they "
                                       "were)\n")


@pytest.mark.slow
def test_train_py_on_a_full_disk_stops_keeps_the_last_model_and_resumes(tmp_path):
    """A real training whose disk fills after its first checkpoint; the rerun finishes the planned epochs."""
    import time

    from conftest import REPO, SAMPLE_DIR

    where = tmp_path / "disk"
    if not _can_mount(where):
        pytest.skip("needs root and tmpfs mounts to fill a real disk under a running process")
    try:
        data = tmp_path / "data"
        data.mkdir()
        for json_path in sorted(SAMPLE_DIR.glob("*.json"))[:6]:
            for path in (json_path, json_path.with_suffix(".png")):
                (data / path.name).write_bytes(path.read_bytes())
        (data / "labels.txt").write_bytes((SAMPLE_DIR / "labels.txt").read_bytes())
        run = where / "run"
        command = [sys.executable, "train.py", "--data", str(data), "--out", str(run), "--cache-dir",
                   str(tmp_path / "cache"), "--image-size", "64", "--depth", "2", "--base-filters", "4",
                   "--batch-size", "2", "--epochs", "2", "--checkpoint", "last"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)
        deadline = time.time() + 240
        while not (run / "model.keras").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        disk = SmallDisk(where, True, None)
        disk.fill(left=0)
        first = (run / "model.keras").read_bytes()
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and LINE.match(last[len("error: "):]) and str(run) in last, last
        assert not disk.temporaries()
        import keras

        keras.saving.load_model(run / "model.keras", safe_mode=True)  # the last complete model, whole
        assert (run / "model.keras").read_bytes() == first or (run / "model.keras").stat().st_size > 0
        disk.free_up()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resuming" in done.stdout
        assert len((run / "history.csv").read_text().strip().splitlines()) == 1 + 2
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
