"""Training callbacks: keep the best model, back up every epoch kill-safely, stop at the first NaN loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np

from keras_unet.io.files import atomic_path, write_bytes_atomic
from keras_unet.model.saving import save_for_inference

class BestCheckpoint(keras.callbacks.Callback):
    """Keep the network with the best validation score (keep="best") or the latest epoch's ("last"), atomically."""

    def __init__(self, path: Path, monitor: str = "val_dice", best: float = -math.inf, keep: str = "best"):
        super().__init__()
        self.path, self.monitor, self.best, self.keep = Path(path), monitor, best, keep

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not finite(logs.get("loss")):
            return  # never replace a good model with one from a diverged epoch
        value = logs.get(self.monitor)
        better = value is not None and float(value) > self.best
        if better:
            self.best = float(value)
        if better or self.keep == "last":
            save_for_inference(self.model, self.path)


class SafeBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that keeps two copies and never backs up an epoch whose loss is not finite."""

    def __init__(self, backup_dir):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)

    def on_epoch_end(self, epoch, logs=None):
        if finite((logs or {}).get("loss")):
            super().on_epoch_end(epoch, logs)

    def _save_model(self):
        """Keras's backup, with every file written through a temporary file and a rename (kill-safe)."""
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        for latest, previous in ((self._weights_path, self._prev_weights_path),
                                 (self._training_metadata_path, self._prev_training_metadata_path)):
            if Path(latest).exists():
                write_bytes_atomic(Path(previous), Path(latest).read_bytes())
        with atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        write_bytes_atomic(Path(self._training_metadata_path), json.dumps(metadata).encode("utf-8"))


def finite(value) -> bool:
    """Whether a logged value is a finite number (None counts as finite: nothing was logged)."""
    try:
        return value is None or math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite loss and say what usually causes it."""

    def __init__(self):
        super().__init__()
        self.failed_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.failed_at = batch
            self.model.stop_training = True
