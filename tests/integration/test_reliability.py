"""Bad input reaches the user as one clear line per file, through `python -m keras_unet.masks` and `train.py`."""

import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO
from keras_unet.cli import masks as masks_cli
from keras_unet.config import Config
from keras_unet.data.samples import prepare_samples
from keras_unet.errors import ConfigError, DataError
from keras_unet.io.files import write_json_atomic
from keras_unet.train.callbacks import BestCheckpoint
from keras_unet.train.history import backup_epoch, read_history, repair_backup, trim_history
from keras_unet.train.run import prepare_run_dir
from labelme_factory import document, gradient, labelme_pair, png_bytes, sample_copy, shape, write_image, write_json

RIB = shape("rib", [[2, 2], [12, 2], [12, 12]])


def _good(folder, name="good"):
    return labelme_pair(folder, name, [RIB])


def _cli(capsys, data, out, *extra):
    code = masks_cli.main([str(data), "--classes", "rib", "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad_line(capsys, tmp_path, make_bad):
    """Run the masks CLI on a folder of one good and one bad file; return the bad file's line of the error."""
    data = tmp_path / "data"
    _good(data)
    bad = make_bad(data)
    code, _, err = _cli(capsys, data, tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == f"error: {data}: 1 of 2 annotation files cannot be used:"
    assert lines[-1] == "(--skip-bad trains on the other 1)"
    (line,) = [x for x in lines[1:-1]]
    assert line.startswith(f"  {bad}: ")
    return line[len(f"  {bad}: "):]


def _png_with_size(width, height):
    """A PNG whose header claims width x height (the pixel data is that of a 1x1 image)."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# -- one bad file: the problem named, file by file ------------------------------------------------------


def test_malformed_json(capsys, tmp_path):
    problem = _bad_line(capsys, tmp_path, lambda d: write_json(d / "bad.json", '{"shapes": [1, 2'))
    assert problem.startswith("malformed JSON: ") and "line 1 column" in problem


def test_truncated_json(capsys, tmp_path):
    text = json.dumps(document([RIB], "good.png"))
    problem = _bad_line(capsys, tmp_path, lambda d: write_json(d / "bad.json", text[: len(text) // 2]))
    assert problem.startswith("malformed JSON: ")


def test_json_that_is_not_labelme(capsys, tmp_path):
    problem = _bad_line(capsys, tmp_path, lambda d: write_json(d / "bad.json", {"name": "not labelme"}))
    assert problem == "not a Labelme annotation (no 'shapes' list)"


def test_missing_image(capsys, tmp_path):
    problem = _bad_line(capsys, tmp_path, lambda d: write_json(d / "bad.json", document([RIB], "gone.png")))
    assert problem == f"{tmp_path / 'data' / 'gone.png'}: file not found"


def test_unreadable_image_path(capsys, tmp_path):
    def make(d):
        (d / "folder.png").mkdir()
        return write_json(d / "bad.json", document([RIB], "folder.png"))
    assert _bad_line(capsys, tmp_path, make).endswith("folder.png: is a folder, not an image file")


# Root reads a mode-000 file through two capabilities, CAP_DAC_OVERRIDE (bit 1) and CAP_DAC_READ_SEARCH (bit 2).
# This child gives both up (lowering one's own capabilities needs no privilege), checks that the locked file now
# refuses to open, then runs `python -m keras_unet.masks` with the remaining arguments. It stays uid 0, so it still
# reads the interpreter under /root/.pyenv (mode 700: user "nobody" could not) and the repo by their owner bits.
# Exit 77 with a reason on stderr: the mechanism is not available here.
_WITHOUT_DAC_OVERRIDE = r"""
import ctypes, os, runpy, sys


def unavailable(reason):
    print(reason, file=sys.stderr)
    sys.exit(77)


class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


locked, args = sys.argv[1], sys.argv[2:]
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "capset"):
        unavailable("running as root on a system without capset(2): root reads a mode-000 file")
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    if libc.capget(ctypes.byref(header), data) != 0:
        unavailable(f"running as root and capget(2) failed ({os.strerror(ctypes.get_errno())})")
    dac = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].effective &= ~dac
    data[0].permitted &= ~dac
    data[0].inheritable &= ~dac
    if libc.capset(ctypes.byref(header), data) != 0:
        unavailable(f"running as root and capset(2) failed ({os.strerror(ctypes.get_errno())}): cannot give up "
                    "CAP_DAC_OVERRIDE, so root reads a mode-000 file")
try:
    open(locked, "rb").close()
except PermissionError:
    pass
else:
    unavailable(f"{locked} (mode 000) opens even without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: "
                "no way here to make a file unreadable")
sys.argv = ["keras_unet.masks", *args]
runpy.run_module("keras_unet.masks", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="file permission bits are POSIX")
def test_image_without_read_permission(tmp_path):
    """An image the user may not read is one line naming it and the OS's reason, also when the tests run as root."""
    data = tmp_path / "data"
    _good(data)
    locked = write_image(data / "locked.png", gradient())
    locked.chmod(0)
    bad = write_json(data / "bad.json", document([RIB], "locked.png"))
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_DAC_OVERRIDE, str(locked), str(data), "--classes", "rib",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    if proc.returncode == 77:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {data}: 1 of 2 annotation files cannot be used:",
        f"  {bad}: {locked}: cannot read the file (Permission denied)",
        "(--skip-bad trains on the other 1)",
    ]
    assert not (tmp_path / "out").exists()


def test_truncated_image(capsys, tmp_path):
    def make(d):
        data = png_bytes(gradient())
        (d / "cut.png").write_bytes(data[: len(data) // 2])
        return write_json(d / "bad.json", document([RIB], "cut.png"))
    assert _bad_line(capsys, tmp_path, make).endswith("cut.png: truncated PNG file (no IEND chunk at the end)")


def test_image_path_that_is_not_an_image(capsys, tmp_path):
    def make(d):
        (d / "notes.png").write_text("just text")
        return write_json(d / "bad.json", document([RIB], "notes.png"))
    assert _bad_line(capsys, tmp_path, make).endswith("notes.png: not an image (unrecognised file format)")


def test_image_path_is_only_opened_as_an_image(capsys, tmp_path):
    def make(d):
        return write_json(d / "bad.json", document([RIB], "good.json"))  # points at another annotation
    assert _bad_line(capsys, tmp_path, make).endswith("good.json: not an image (unrecognised file format)")


def test_image_data_that_does_not_decode(capsys, tmp_path):
    def make(d):
        doc = document([RIB], "")
        doc["imageData"] = "not base64 at all!"
        return write_json(d / "bad.json", doc)
    assert _bad_line(capsys, tmp_path, make) == "imageData is not valid base64"


def test_image_data_that_is_not_an_image(capsys, tmp_path):
    def make(d):
        return write_json(d / "bad.json", document([RIB], "", image_data=b"hello, not an image"))
    assert _bad_line(capsys, tmp_path, make) == "not an image (unrecognised file format)"


def test_image_size_differs_from_the_annotation(capsys, tmp_path):
    def make(d):
        write_image(d / "big.png", gradient(21, 30))
        return write_json(d / "bad.json", document([RIB], "big.png", 20, 30))
    problem = _bad_line(capsys, tmp_path, make)
    assert problem == f"image is 30x21 but the annotation says 30x20 ({tmp_path / 'data' / 'big.png'})"


def test_shape_with_too_few_points(capsys, tmp_path):
    def make(d):
        return labelme_pair(d, "bad", [shape("rib", [[1, 1], [5, 5]])])
    assert _bad_line(capsys, tmp_path, make) == "shape 0 ('rib'): a polygon needs at least 3 points, this one has 2"


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_coordinates(capsys, tmp_path, value):
    def make(d):
        return labelme_pair(d, "bad", [shape("rib", [[1, 1], [value, 5], [5, 1]])])
    problem = _bad_line(capsys, tmp_path, make)
    assert problem == f"shape 0 ('rib'): point [{value}, 5] is not finite (NaN or infinity)"


def test_unknown_shape_type(capsys, tmp_path):
    def make(d):
        return labelme_pair(d, "bad", [shape("rib", [[1, 1], [5, 5]], "blob")])
    assert _bad_line(capsys, tmp_path, make) == "shape 0 ('rib'): unknown shape_type 'blob'"


def test_image_of_zero_pixels(capsys, tmp_path):
    def make(d):
        (d / "empty.png").write_bytes(_png_with_size(0, 20))
        return write_json(d / "bad.json", document([RIB], "empty.png"))
    assert _bad_line(capsys, tmp_path, make).endswith("empty.png: image has 0 pixels (0x20)")


@pytest.mark.parametrize("width, height, message", [
    (12000, 9000, "image is 12000x9000 = 108,000,000 pixels, more than the 100,000,000 limit"),
    (20000, 20000, "image has more than 178,956,970 pixels (Pillow's decompression-bomb guard), more than the "
                   "100,000,000 limit"),  # Pillow refuses to read this header at all, so the size goes unsaid
])
def test_image_over_the_pixel_limit(capsys, tmp_path, width, height, message):
    def make(d):
        (d / "huge.png").write_bytes(_png_with_size(width, height))
        return write_json(d / "bad.json", document([RIB], "huge.png"))
    problem = _bad_line(capsys, tmp_path, make)
    assert problem == f"{tmp_path / 'data' / 'huge.png'}: {message}"


def test_declared_size_over_the_pixel_limit(capsys, tmp_path):
    def make(d):
        return write_json(d / "bad.json", document([RIB], "good.png", 20000, 20000))
    problem = _bad_line(capsys, tmp_path, make)
    assert problem == "imageWidth x imageHeight is 20000x20000 = 400,000,000 pixels, more than the 100,000,000 limit"


def test_coordinates_far_beyond_any_image(capsys, tmp_path):
    def make(d):
        return labelme_pair(d, "bad", [shape("rib", [[1, 1], [1e12, 5], [5, 1]])])
    assert _bad_line(capsys, tmp_path, make) == "shape 0 ('rib'): point [1000000000000.0, 5] lies more than 1e+09 pixels out"


# -- counted, warned or accepted ------------------------------------------------------------------------


def test_points_outside_the_image_are_clipped_and_counted(capsys, tmp_path):
    labelme_pair(tmp_path / "d", "a", [shape("rib", [[-5, -5], [40, 2], [12, 12]])])
    code, out, err = _cli(capsys, tmp_path / "d", tmp_path / "o")
    assert code == 0 and "; 2 points outside the image clipped" in out


def test_labels_outside_the_class_list_are_skipped_and_counted(capsys, tmp_path):
    labelme_pair(tmp_path / "d", "a", [RIB, shape("heart", [[1, 1], [5, 1], [5, 5]])] * 1)
    code, out, _ = _cli(capsys, tmp_path / "d", tmp_path / "o")
    assert code == 0 and "; skipped labels not in the class list: heart x1" in out


def test_class_with_no_pixels_is_named_in_a_warning(capsys, tmp_path):
    _good(tmp_path / "d")
    code, out, _ = _cli(capsys, tmp_path / "d", tmp_path / "o", "--classes", "rib,heart")
    assert code == 0 and "warning: class 'heart' has no pixels in any of the 1 images" in out.splitlines()


def test_image_outside_the_data_folder_is_followed_and_counted(capsys, tmp_path):
    write_image(tmp_path / "images" / "x.png", gradient())
    write_json(tmp_path / "d" / "x.json", document([RIB], "../images/x.png"))
    code, out, _ = _cli(capsys, tmp_path / "d", tmp_path / "o")
    assert code == 0 and "; 1 images outside the data folder" in out
    lines = []
    prepare_samples(tmp_path / "d", ["rib"], tmp_path / "c", log=lines.append)
    assert "; 1 images outside the data folder" in lines[-1]


def test_16_bit_palette_and_mixed_size_images_work(capsys, tmp_path):
    data = tmp_path / "d"
    labelme_pair(data, "deep", [RIB], image=gradient(20, 30, np.uint16))
    labelme_pair(data, "other_size", [RIB], 40, 25)
    palette = tmp_path / "p.png"
    write_image(palette, gradient())
    from PIL import Image  # matplotlib depends on Pillow

    Image.open(palette).convert("P").save(data / "pal.png")
    write_json(data / "pal.json", document([RIB], "pal.png"))
    code, out, err = _cli(capsys, data, tmp_path / "o")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("3 annotations rasterised")
    samples = prepare_samples(data, ["rib"], tmp_path / "c", log=None)
    shapes = {s.stem: cv2.imread(str(s.image_path), cv2.IMREAD_UNCHANGED).shape for s in samples}
    assert shapes == {"deep": (20, 30), "other_size": (40, 25), "pal": (20, 30)}


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "d").mkdir()
    code, _, err = _cli(capsys, tmp_path / "d", tmp_path / "o")
    assert code == 2 and err == f"error: {tmp_path / 'd'}: no Labelme .json files found in this folder or its subfolders\n"


# -- every problem at once, and --skip-bad --------------------------------------------------------------


def _mixed_folder(folder):
    _good(folder, "a")
    _good(folder, "b")
    write_json(folder / "c.json", "{")
    write_json(folder / "d.json", document([RIB], "gone.png"))
    return folder


def test_all_problems_are_listed_before_anything_is_written(capsys, tmp_path):
    data = _mixed_folder(tmp_path / "d")
    code, _, err = _cli(capsys, data, tmp_path / "o")
    assert code == 2
    assert err.splitlines() == [
        f"error: {data}: 2 of 4 annotation files cannot be used:",
        f"  {data / 'c.json'}: malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        f"  {data / 'd.json'}: {data / 'gone.png'}: file not found",
        "(--skip-bad trains on the other 2)",
    ]
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="2 of 4 annotation files cannot be used"):
        prepare_samples(data, ["rib"], tmp_path / "c", log=None)


def test_skip_bad_uses_the_good_files_and_lists_the_others(capsys, tmp_path):
    data = _mixed_folder(tmp_path / "d")
    code, out, _ = _cli(capsys, data, tmp_path / "o", "--skip-bad")
    assert code == 0 and "2 annotations rasterised; 2 unusable annotation files skipped" in out
    assert (tmp_path / "o" / "skipped.txt").read_text().splitlines()[1] == f"{data / 'd.json'}: {data / 'gone.png'}: file not found"
    bad, lines = [], []
    samples = prepare_samples(data, ["rib"], tmp_path / "c", log=lines.append, skip_bad=True, bad=bad)
    assert [s.stem for s in samples] == ["a", "b"] and [p.name for p, _ in bad] == ["c.json", "d.json"]
    assert "2 samples, 2 regenerated" in lines[-1] and "2 unusable annotation files skipped" in lines[-1]


def test_masks_module_command_line_prints_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    write_json(tmp_path / "d" / "x.json", "[1, 2]")
    proc = subprocess.run([sys.executable, "-m", "keras_unet.masks", str(tmp_path / "d"), "--classes", "rib",
                           "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'd' / 'x.json'}: not a Labelme annotation (no 'shapes' list)" in proc.stderr


# -- train.py ------------------------------------------------------------------------------------------


def _train(tmp_path, data, *extra, timeout=300):
    command = [sys.executable, "train.py", "--data", str(data), "--out", str(tmp_path / "run"),
               "--cache-dir", str(tmp_path / "cache"), "--image-size", "64", "--depth", "2", "--base-filters", "4",
               "--batch-size", "2", "--epochs", "1", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.slow
def test_train_lists_bad_files_then_skip_bad_trains_on_the_rest(tmp_path):
    data = sample_copy(tmp_path / "d", 5)
    write_json(data / "phantom_000.json", "{\"shapes\": ")
    write_json(data / "phantom_001.json", {"shapes": [], "imagePath": "phantom_001.png", "imageData": "%%"})
    proc = _train(tmp_path, data)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-4] == f"error: {data}: 2 of 5 annotation files cannot be used:"
    assert lines[-3] == f"  {data / 'phantom_000.json'}: malformed JSON: Expecting value at line 1 column 12"
    assert lines[-2] == f"  {data / 'phantom_001.json'}: imageData is not valid base64"
    assert not (tmp_path / "run" / "model.keras").exists()
    proc = _train(tmp_path, data, "--skip-bad")
    assert proc.returncode == 0, proc.stderr[-2000:]
    skipped = tmp_path / "run" / "skipped.txt"
    assert f"warning: 2 unusable annotation files skipped (--skip-bad); the list is in {skipped}" in proc.stdout
    assert skipped.read_text().splitlines() == [f"{data / 'phantom_000.json'}: malformed JSON: Expecting value at "
                                                "line 1 column 12", f"{data / 'phantom_001.json'}: imageData is "
                                                "not valid base64"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 3


def test_train_on_an_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "labels.txt").write_text("rib\n")
    proc = _train(tmp_path, tmp_path / "d")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'd'}: no Labelme .json files, and no masks/<class>/<stem>.png files beside images")


@pytest.mark.slow
def test_nan_loss_stops_train_py_with_a_one_line_message(tmp_path):
    data = sample_copy(tmp_path / "d")
    proc = _train(tmp_path, data, "--learning-rate", "1e30", "--epochs", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'run'}: the loss became NaN/infinite (batch ")
    assert "the learning rate (1e+30) is likely too high, or the data holds broken images/masks" in last
    assert not (tmp_path / "run" / "model.keras").exists()  # the first epoch diverged: no epoch was worth keeping


@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_nan_loss_after_a_good_epoch_keeps_that_epochs_model(tmp_path, monkeypatch, checkpoint):
    import keras

    from keras_unet.config import merge
    from keras_unet.errors import TrainingError
    from keras_unet.train.run import train

    data = sample_copy(tmp_path / "d")
    config = merge(Config(data=str(data), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                          image_size=64, batch_size=2, epochs=3, checkpoint=checkpoint),
                   {"model.depth": 2, "model.base_filters": 4})
    good = {}

    class DivergeInTheSecondEpoch(keras.callbacks.Callback):
        """Keeps the weights of epoch 0 (saved by then), then makes every weight NaN at the first batch of epoch 1."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                good["weights"] = [w.copy() for w in self.model.get_weights()]

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                for variable in self.model.trainable_variables:
                    variable.assign(variable * np.nan)

    monkeypatch.setattr(keras.callbacks, "TensorBoard", lambda *a, **k: DivergeInTheSecondEpoch())
    with pytest.raises(TrainingError, match=r"the loss became NaN/infinite \(batch 0\); .*The last good model is kept"):
        train(config, log=lambda *a: None)
    kept = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True).get_weights()
    assert len(kept) == len(good["weights"])
    for got, want in zip(kept, good["weights"]):
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)  # epoch 0's model, not the diverged one


class _Labelled:
    """A stand-in model: what the checkpoint saves is its label."""

    label = ""


def _save_label(monkeypatch):
    monkeypatch.setattr("keras_unet.train.callbacks.save_for_inference",
                        lambda model, path: Path(path).write_text(model.label))


def test_checkpoint_never_saves_a_diverged_epoch(tmp_path, monkeypatch):
    _save_label(monkeypatch)
    model, path = _Labelled(), tmp_path / "model.keras"
    checkpoint = BestCheckpoint(path)
    checkpoint.set_model(model)
    model.label = "good"
    checkpoint.on_epoch_end(0, {"loss": 0.5, "val_dice": 0.4})
    model.label = "diverged"
    checkpoint.on_epoch_end(1, {"loss": math.nan, "val_dice": 0.9})
    checkpoint.on_epoch_end(2, {"loss": math.inf, "val_dice": 0.9})
    assert path.read_text() == "good" and checkpoint.best == 0.4


def test_checkpoint_last_keeps_every_finite_epoch(tmp_path, monkeypatch):
    _save_label(monkeypatch)
    model, path = _Labelled(), tmp_path / "model.keras"
    checkpoint = BestCheckpoint(path, keep="last")
    checkpoint.set_model(model)
    for epoch, (label, loss, dice) in enumerate([("e0", 0.5, 0.6), ("e1", 0.4, 0.3), ("e2", math.nan, 0.9)]):
        model.label = label
        checkpoint.on_epoch_end(epoch, {"loss": loss, "val_dice": dice})
    assert path.read_text() == "e1"  # worse validation Dice than e0, but the last finite epoch


# -- resume bookkeeping (fast; the real kill test is tests/integration/test_kill_resume.py) --------------------------


def test_history_is_trimmed_to_the_backed_up_epochs(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_dice\r\n0,1.0,0.2\r\n1,0.9,0.3\r\n2,0.8,0.4\r\n3,0.7,0.")
    assert [r["epoch"] for r in read_history(history)] == [0, 1, 2, 3]
    history.write_text("epoch,loss,val_dice\r\n0,1.0,0.2\r\n1,0.9,0.3\r\n2,0.8,0.4\r\n3,0.7")
    assert [r["epoch"] for r in read_history(history)] == [0, 1, 2]  # a row cut short is dropped
    rows = trim_history(history, 2)
    assert [r["epoch"] for r in rows] == [0, 1] and read_history(history) == rows
    assert trim_history(history, 0) == [] and not history.exists()


def test_backup_metadata_survives_a_torn_write(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    assert backup_epoch(backup) == 0
    (backup / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    assert backup_epoch(backup) == 3
    (backup / "training_metadata.json.bkp").write_text('{"epoch": 2, "batch": 0}')
    (backup / "training_metadata.json").write_text('{"epo')
    repair_backup(backup)
    assert backup_epoch(backup) == 2


def test_unfinished_run_resumes_and_finished_run_is_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_json_atomic(out / "config.json", Config(epochs=5).to_dict())  # killed right after the settings were written
    assert prepare_run_dir(out, Config(epochs=5), overwrite=False) is True
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run_dir(out, Config(epochs=5), overwrite=False)
