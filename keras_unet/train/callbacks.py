"""Training callbacks: keep the best model, back up every epoch kill-safely, stop at the first NaN loss, print one
short line per epoch."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

from keras_unet.errors import TrainingError, first_line
from keras_unet.io.files import write_bytes_atomic
from keras_unet.model.saving import save_for_inference, save_weights_file
from keras_unet.progress import StatusLine, is_terminal, time_left

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
    """BackupAndRestore that keeps two copies and never backs up an epoch whose loss is not finite.

    budget: the share of the training time backups may take. Keras's weight saving walks the whole model and
    optimizer in Python (seconds on 2 loaded cores, most of a short epoch), so after the first epoch an epoch is
    backed up only once the time since the last backup is at least the last backup's seconds / budget; a kill
    then repeats the epochs since the last backup (the history is trimmed to it), never skips one."""

    def __init__(self, backup_dir, budget: float = 0.05, clock=time.perf_counter):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.budget, self._clock = budget, clock
        self._saved_at, self._save_seconds = None, 0.0

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except ValueError as exc:  # weights of other shapes: a backup written by another version of the network
            raise TrainingError(f"{self.backup_dir}: the backup of the unfinished run does not fit this model "
                                f"({first_line(exc)[:160]}); it was written by another keras_unet version or other "
                                "model settings: rerun with --overwrite to start again") from None

    def on_epoch_end(self, epoch, logs=None):
        if not finite((logs or {}).get("loss")):
            return
        start = self._clock()
        if self._saved_at is not None and self._save_seconds > self.budget * (start - self._saved_at):
            return  # backing up now would cost more than the budget
        super().on_epoch_end(epoch, logs)
        self._saved_at = self._clock()
        self._save_seconds = self._saved_at - start

    def _save_model(self):
        """Keras's backup, with every file written through a temporary file and a rename (kill-safe)."""
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        for latest, previous in ((self._weights_path, self._prev_weights_path),
                                 (self._training_metadata_path, self._prev_training_metadata_path)):
            if Path(latest).exists():
                write_bytes_atomic(Path(previous), Path(latest).read_bytes())
        save_weights_file(self.model, Path(self._weights_path))
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        write_bytes_atomic(Path(self._training_metadata_path), json.dumps(metadata).encode("utf-8"))


def epoch_summaries(board):
    """A TensorBoard callback that logs once an epoch, without its per-batch hook (returned as given otherwise).

    With update_freq "epoch", no graph and no profiling, that hook turns every step's logs into summary calls
    that write nothing (0.7 s a step on 2 loaded cores, loop_overhead.py)."""
    if isinstance(board, _TENSORBOARD) and board.update_freq == "epoch" and not board.write_graph \
            and not board.write_steps_per_second and getattr(board, "_should_trace", True) is False:
        board.on_train_batch_end = _nothing
    return board


def _nothing(*args, **kwargs) -> None:
    return None


_TENSORBOARD = keras.callbacks.TensorBoard  # the class itself, also where a test stands something else in for it


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


class EpochClock(keras.callbacks.Callback):
    """Seconds of every epoch: the whole epoch (`epochs`) and its training part, until validation starts (`train`).

    No per-batch hook, so Keras may still dispatch the batch callbacks asynchronously."""

    def __init__(self, clock=time.perf_counter):
        super().__init__()
        self.epochs, self.train = [], []
        self._clock, self._start, self._trained = clock, None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._trained = self._clock(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._trained is None:
            self._trained = self._clock()

    def on_epoch_end(self, epoch, logs=None):
        if self._start is None:
            return
        now = self._clock()
        self.epochs.append(now - self._start)
        self.train.append((self._trained or now) - self._start)
        self._start = None


# what an epoch line shows after the loss: the first of these the epoch logged (log key, label, digits, higher is
# better)
EPOCH_SCORES = (("val_dice", "val Dice", 3, True), ("blanked_mae", "blanked_mae", 4, False))


class EpochLine(keras.callbacks.Callback):
    """One short line per epoch on stdout, for model.fit(verbose=0):

        epoch 3/40  loss 0.4123  val Dice 0.812 *  12 s  (about 7 min left)

    the loss, the score (validation Dice; blanked_mae when pretraining), `*` on a new best, the epoch's seconds and
    the time the remaining epochs should take. On a terminal (stderr a tty) a bar shows the steps within the epoch;
    a log file gets nothing within an epoch. best: the best score of earlier runs of this fit (a resumed run)."""

    def __init__(self, best: float | None = None, out=None, bar=None, every: float = 0.25):
        super().__init__()
        self.best, self.every = best, every
        self._out, self._bar = out, bar
        self._durations: list[float] = []
        self._epoch, self._started, self._drawn = 0, 0.0, 0.0
        self._line = None  # the bar's StatusLine, made on the first draw

    @property
    def out(self):
        return self._out or sys.stdout

    @property
    def bar(self):
        """The stream of the bar within an epoch, or None (not a terminal)."""
        stream = self._bar or sys.stderr
        return stream if is_terminal(stream) else None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._started = epoch, time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        bar = self.bar
        now = time.monotonic()
        if bar is None or now - self._drawn < self.every:
            return
        self._drawn = now
        steps = self.params.get("steps")
        done = batch + 1
        if steps:
            filled = min(20, round(20 * done / steps))
            text = f"[{'=' * filled}{' ' * (20 - filled)}] step {done}/{steps}"
        else:
            text = f"step {done}"
        loss = (logs or {}).get("loss")
        if loss is not None:
            text += f"  loss {float(loss):.4f}"
        self._draw(bar, f"epoch {self._epoch + 1}/{self.params.get('epochs')}  {text}")

    def on_test_begin(self, logs=None):
        if self.bar is not None and self._line is not None and self._line.width:
            self._draw(self.bar, f"epoch {self._epoch + 1}/{self.params.get('epochs')}  validating")

    def _draw(self, stream, text: str) -> None:
        if self._line is None or self._line.stream is not stream:
            self._line = StatusLine(stream)
        self._line.draw(text)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.monotonic() - self._started
        self._durations.append(seconds)
        if self.bar is not None and self._line is not None and self._line.width:  # blank the bar before the line
            self._line.clear()
            self._drawn = 0.0
        self.out.write(self.line(epoch, logs, seconds) + "\n")
        self.out.flush()

    def line(self, epoch: int, logs: dict, seconds: float) -> str:
        """The epoch's line (and the best score updated)."""
        epochs = self.params.get("epochs") or epoch + 1
        parts = [f"epoch {epoch + 1}/{epochs}", f"loss {_number(logs.get('loss'), 4)}"]
        for key, label, digits, higher in EPOCH_SCORES:
            if key in logs:
                value = float(logs[key])
                new_best = finite(value) and (self.best is None or (value > self.best if higher
                                                                    else value < self.best))
                if new_best:
                    self.best = value
                parts.append(f"{label} {_number(value, digits)}" + (" *" if new_best else "  "))
                break
        parts.append(f"{seconds:.0f} s")
        left = epochs - epoch - 1
        if left > 0:
            typical = self._durations[1:] or self._durations  # the first epoch also traces the graph
            parts.append(f"({time_left(sum(typical) / len(typical) * left)})")
        return "  ".join(parts)


def _number(value, digits: int) -> str:
    """A logged value with digits decimals (nan/inf as such; `-` when not logged)."""
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
