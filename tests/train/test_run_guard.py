"""A run folder is written by one training at a time, and an interrupted run resumes only with its own settings."""

import pytest

from helpers import lock_held_elsewhere
from keras_unet.config import Config
from keras_unet.errors import ConfigError
from keras_unet.io.files import LockedError, hold_lock, write_json_atomic
from keras_unet.run_folder import RUN_LOCK
from keras_unet.train.run import prepare_run_dir, run_lock


def _interrupted(out, config):
    out.mkdir(parents=True)
    write_json_atomic(out / "config.json", config.to_dict())  # no metrics.json: interrupted


def test_resuming_with_other_settings_lists_the_differences(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, Config(classes=["rib"], image_size=64, epochs=5))
    other = Config(classes=["rib", "clavicle"], image_size=128, epochs=5)
    other.model.depth = 3
    with pytest.raises(ConfigError) as error:
        prepare_run_dir(out, other, overwrite=False)
    message = str(error.value)
    assert message.startswith(f"{out}: holds an interrupted run with other settings (classes: ['rib'] -> "
                              "['rib', 'clavicle']; image_size: 64 -> 128; model.depth: ")
    assert message.endswith("; the run's value first); resume it with its own settings, use another --out, or "
                            "--overwrite to discard it")
    assert "epochs" not in message and "version" not in message
    assert prepare_run_dir(out, Config(classes=["rib"], image_size=64, epochs=5), overwrite=False) is True


def test_overwrite_keeps_only_the_lock_this_process_holds(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, Config(epochs=5))
    (out / "logs").mkdir()
    with run_lock(out):
        assert prepare_run_dir(out, Config(epochs=2), overwrite=True) is False
        assert [p.name for p in out.iterdir()] == [RUN_LOCK]
    assert list(out.iterdir()) == []


def test_a_second_training_on_the_same_out_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with lock_held_elsewhere(out / RUN_LOCK) as holder:
        with pytest.raises(LockedError) as error:
            with run_lock(out):
                pass
        assert str(error.value).startswith(f"{out}: another training is writing this run folder (process "
                                           f"{holder.pid} on host ")
    assert (out / RUN_LOCK).exists()  # left by the killed process, naming it
    with run_lock(out):  # taken over: the kernel let go of the dead process's lock
        assert str(__import__("os").getpid()) in (out / RUN_LOCK).read_text()
    assert not (out / RUN_LOCK).exists()


def test_only_a_clusters_chief_holds_the_lock(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    with hold_lock(out / RUN_LOCK), run_lock(out):  # worker 1 writes nothing of its own: no lock, no refusal
        pass
