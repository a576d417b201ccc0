"""The run's backup: resuming from a backup that does not fit the model stops in one line and keeps the backup."""

import keras
import pytest

from keras_unet.errors import TrainingError
from keras_unet.model.unet import build_unet
from keras_unet.train.callbacks import SafeBackup


def _compiled(base_filters):
    model = build_unet(2, depth=2, base_filters=base_filters)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def test_a_backup_of_another_model_layout_stops_in_one_line_and_is_kept(tmp_path):
    backup_dir = tmp_path / "run" / "backup"
    first = SafeBackup(backup_dir)
    first.set_model(_compiled(4))
    first.on_epoch_end(0, {"loss": 0.5})
    files = sorted(p.name for p in backup_dir.iterdir())
    assert files
    again = SafeBackup(backup_dir)
    again.set_model(_compiled(8))  # other weight shapes, as a backup of another version's network can have
    with pytest.raises(TrainingError, match=r"backup of the unfinished run does not fit this model .*--overwrite"):
        again.on_train_begin()
    assert sorted(p.name for p in backup_dir.iterdir()) == files
    same = SafeBackup(backup_dir)
    same.set_model(_compiled(4))
    same.on_train_begin()  # the backup of the same layout resumes
