"""The one fit loop: model.fit with the history file, a NaN stop and a kill-safe backup, resumable after a kill
(under several replicas or workers, the same callbacks driven by train.distributed's loop)."""

from __future__ import annotations

import math
from pathlib import Path

import keras

from keras_unet.errors import TrainingError
from keras_unet.run_folder import BACKUP_DIR
from keras_unet.train.callbacks import BestCheckpoint, EpochLine, SafeBackup, StopOnNaN
from keras_unet.train.distributed import fit_distributed, is_distributed
from keras_unet.train.history import backup_epoch, repair_backup, trim_history


def resume_history(folder: Path, history: Path, resuming: bool, fit_done: bool = False) -> list[dict]:
    """The history rows an interrupted fit in folder had finished (history.csv trimmed to match its backup)."""
    if not resuming:
        history.unlink(missing_ok=True)
        return []
    backup = Path(folder) / BACKUP_DIR
    repair_backup(backup)
    return trim_history(history, 10 ** 9 if fit_done else backup_epoch(backup))


def fit(model, train_ds, epochs: int, folder: Path, history: Path, append: bool, val_ds=None, callbacks=(),
        what: str = "loss", advice: str = "", strategy=None, steps: int | None = None, batch_size: int | None = None,
        finished: bool = False) -> None:
    """model.fit logging to history and backing up into folder/backup, one short line per epoch on the console
    (EpochLine; Keras prints nothing); TrainingError when the loss is not finite.

    callbacks run after the history row is written and before the backup: a kill in between repeats an epoch,
    never skips one. With a strategy of several replicas or workers (train.distributed.is_distributed), train_ds
    and val_ds are make(input_context, per-replica batch) -> tf.data.Dataset of that worker's share, an epoch is
    steps global batches of batch_size, and finished (the chief's fit had ended before a restart) is shared by all."""
    nan_guard = StopOnNaN()
    best = next((c.best for c in callbacks if isinstance(c, BestCheckpoint) and math.isfinite(c.best)), None)
    everything = [keras.callbacks.CSVLogger(str(history), append=append), EpochLine(best), *callbacks, nan_guard,
                  SafeBackup(Path(folder) / BACKUP_DIR)]
    if is_distributed(strategy):
        fit_distributed(model, strategy, train_ds, val_ds, epochs, steps, batch_size, everything, finished)
    elif not finished:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=everything, verbose=0,
                  shuffle=False)  # the dataset shuffles itself
    if nan_guard.failed_at is not None:
        raise TrainingError(f"{folder}: the {what} became NaN/infinite (batch {nan_guard.failed_at}); {advice}")
