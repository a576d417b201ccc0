"""predict.py over a folder (and --rank) is restartable: stopped at any moment and run again with the same command it
continues where it stopped, never counting a half-finished image as done; --overwrite redoes all; summary.csv."""

import csv
import json
import os
import time

import numpy as np
import pytest

from helpers import CLASSES, identity_predictor, lock_held_elsewhere
from keras_unet.errors import ConfigError
from keras_unet.infer import batch, predict, ranking
from keras_unet.io.files import LockedError
from keras_unet.run_folder import OUT_LOCK, PROGRESS_FILE, SUMMARY_FILE
from labelme_factory import write_image

COUNT = 6


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(COUNT):
        write_image(tmp_path / "in" / f"img_{i}.png", rng.integers(0, 256, (24, 32), dtype=np.uint8))
    return tmp_path / "in"


def _summary(out) -> dict:
    with open(out / SUMMARY_FILE, newline="") as f:
        return {os.path.basename(row["image"]): row for row in csv.DictReader(f)}


def _counting(monkeypatch, module, name, stop_at=None):
    """Wrap module.name to count calls; the call number stop_at raises KeyboardInterrupt (a kill, in-process)."""
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_stopped_mid_image_then_rerun_does_only_the_rest(folder, tmp_path, monkeypatch):
    out, predictor = tmp_path / "out", identity_predictor()
    # the 4th image's masks are written, its overlay is not: stopped mid-image
    _counting(monkeypatch, predict, "save_rgb", stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_folder(predictor, folder, out, progress=False, log=lambda _: None)
    assert (out / CLASSES[0] / "img_3.png").is_file() and not (out / "overlays" / "img_3.png").exists()
    assert sorted(_summary(out)) == ["img_0.png", "img_1.png", "img_2.png"]  # what the stopped run had finished
    with open(out / PROGRESS_FILE, "ab") as journal:
        journal.write(b'{"image": "torn by a kil')  # a kill in the middle of a journal line
    with pytest.raises(KeyboardInterrupt):  # stopped again: the journal must keep what follows the torn line
        _counting(monkeypatch, predict, "save_rgb", stop_at=2)
        predict.predict_folder(predictor, folder, out, progress=False, log=lambda _: None)
    monkeypatch.undo()
    assert sorted(batch.read_progress(out)[1]) == [str(folder / f"img_{i}.png") for i in range(4)]
    (out / CLASSES[0] / ".img_5.png.999.0123abcd.tmp").write_bytes(b"half")  # a killed write's temporary file
    monkeypatch.undo()
    calls = _counting(monkeypatch, predict, "predict_image")
    lines = []
    result = predict.predict_folder(predictor, folder, out, progress=False, log=lines.append)
    assert [os.path.basename(c[1]) for c in calls] == ["img_4.png", "img_5.png"]
    assert result["written"] == 2 and result["earlier"] == 4 and result["failed"] == []
    assert lines[-1].startswith(f"2 image(s) segmented into {out}; 4 done by an earlier run")
    summary = _summary(out)
    assert len(summary) == COUNT and {row["status"] for row in summary.values()} == {"done"}
    assert summary["img_0.png"]["reason"] == "by an earlier run" and summary["img_4.png"]["reason"] == ""
    assert summary["img_3.png"]["reason"] == "by an earlier run"  # done by the second, stopped, run
    assert not list(out.rglob("*.tmp"))
    assert [json.loads(line)["image"] for line in (out / PROGRESS_FILE).read_text().splitlines()[1:]] == [
        str(folder / f"img_{i}.png") for i in range(COUNT)]  # the journal, compacted: one line per image
    for i in range(COUNT):
        assert all((out / name / f"img_{i}.png").is_file() for name in [*CLASSES, "overlays"])
    calls.clear()
    predict.predict_folder(predictor, folder, out, progress=False, log=lambda _: None)
    assert calls == []  # finished: nothing to redo
    predict.predict_folder(predictor, folder, out, progress=False, log=lambda _: None, overwrite=True)
    assert len(calls) == COUNT  # --overwrite redoes all


def test_bad_and_non_regular_images_are_listed_with_their_reasons(folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    os.mkfifo(folder / "pipe.png")
    start = time.monotonic()
    result = predict.predict_folder(identity_predictor(), folder, tmp_path / "out", progress=False, log=lambda _: None)
    assert time.monotonic() - start < 10  # the FIFO was never opened for reading (that would block for ever)
    summary = _summary(tmp_path / "out")
    assert summary["pipe.png"]["status"] == "failed"
    assert summary["pipe.png"]["reason"] == f"{folder / 'pipe.png'}: is a FIFO (named pipe), not a regular file"
    assert summary["broken.png"]["status"] == "failed" and "broken.png" in summary["broken.png"]["reason"]
    assert sorted(os.path.basename(p) for p in result["failed"]) == ["broken.png", "pipe.png"]


def test_other_settings_or_a_foreign_folder_are_refused(folder, tmp_path):
    out = tmp_path / "out"
    predict.predict_folder(identity_predictor(), folder, out, progress=False, log=lambda _: None)
    with pytest.raises(ConfigError) as error:
        predict.predict_folder(identity_predictor(), folder, out, progress=False, log=lambda _: None, classes=CLASSES[:1])
    assert str(error.value).startswith(f"{out}: holds the results of a predict with other settings (classes: ")
    assert "--overwrite to redo every image" in str(error.value)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    with pytest.raises(ConfigError, match="already exists and holds files"):
        predict.predict_folder(identity_predictor(), folder, tmp_path / "mine", progress=False, log=lambda _: None)


def test_a_second_process_on_the_same_out_is_refused_naming_the_first(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with lock_held_elsewhere(out / OUT_LOCK) as holder:
        with pytest.raises(LockedError) as error:
            predict.predict_folder(identity_predictor(), folder, out, progress=False, log=lambda _: None)
        assert str(error.value).startswith(f"{out}: another predict is writing this folder (process {holder.pid} on "
                                           "host ")
    predict.predict_folder(identity_predictor(), folder, out, progress=False, log=lambda _: None)  # a dead holder's lock
    assert len(_summary(out)) == COUNT and not (out / OUT_LOCK).exists()


def test_rank_stopped_then_rerun_scores_only_the_rest_and_ranks_the_same(folder, tmp_path, monkeypatch):
    predictor = identity_predictor()
    whole = ranking.rank_folder(predictor, folder, tmp_path / "whole", top=2, progress=False, log=lambda _: None)
    out = tmp_path / "out"
    _counting(monkeypatch, ranking, "score_image", stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        ranking.rank_folder(predictor, folder, out, top=2, progress=False, log=lambda _: None)
    monkeypatch.undo()
    calls = _counting(monkeypatch, ranking, "score_image")
    lines = []
    again = ranking.rank_folder(predictor, folder, out, top=2, progress=False, log=lines.append)
    assert len(calls) == COUNT - 2  # the two images scored before the stop are not scored again
    assert f"{COUNT} image(s) ranked (2 scored by an earlier run)" in lines[0]
    assert (out / "ranking.csv").read_text() == (tmp_path / "whole" / "ranking.csv").read_text()
    assert [r.path for r in again["ranked"]] == [r.path for r in whole["ranked"]]
    summary = _summary(out)
    assert {row["status"] for row in summary.values()} == {"done"} and all(row["score"] for row in summary.values())


def test_on_image_sees_every_image_after_a_restart_with_the_same_masks(folder, tmp_path, monkeypatch):
    out, predictor, seen = tmp_path / "out", identity_predictor(), {}

    def collect(path, masks, classes):
        assert list(classes) == CLASSES and masks.dtype == np.uint8
        seen[path.name] = masks

    quiet = dict(progress=False, log=lambda _: None, on_image=collect)
    predict.predict_folder(predictor, folder, tmp_path / "whole", **quiet)
    whole, seen = seen, {}
    _counting(monkeypatch, predict, "save_rgb", stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        predict.predict_folder(predictor, folder, out, **quiet)
    monkeypatch.undo()
    seen.clear()
    predict.predict_folder(predictor, folder, out, **quiet)  # flags.csv, say, still covers every image
    assert sorted(seen) == sorted(whole) and all(np.array_equal(seen[k], whole[k]) for k in whole)
