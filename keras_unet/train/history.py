"""The training history (history.csv) and the backup's epoch count: read, repair after a kill, plot."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np

from keras_unet.io.files import atomic_path, write_bytes_atomic
from keras_unet.run_folder import CONFIG_FILE, SPLIT_FILE

def read_history(path: Path) -> list[dict]:
    """Complete rows of a CSVLogger history file, numbers as floats (a row cut short by a kill is dropped)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [_history_row(row, reader.fieldnames) for row in reader]
    return [row for row in rows if row is not None]


def _history_row(row: dict, fields) -> dict | None:
    if None in row or any(row.get(k) in ("", None) for k in fields):
        return None
    try:
        values = {k: float(v) if v != "NA" else math.nan for k, v in row.items()}
    except ValueError:
        return None
    return values if float(values["epoch"]).is_integer() else None


def backup_epoch(backup: Path) -> int:
    """Epochs completed according to the BackupAndRestore metadata (0 when there is none or it is unreadable)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(json.loads((backup / name).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


def repair_backup(backup: Path) -> None:
    """Put back the previous backup metadata when a kill left the latest one unreadable (or drop it)."""
    latest, previous = backup / "training_metadata.json", backup / "training_metadata.json.bkp"
    if not latest.exists():
        return
    try:
        json.loads(latest.read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        if previous.exists():
            shutil.copyfile(previous, latest)
        else:
            latest.unlink(missing_ok=True)


def trim_history(path: Path, epochs_done: int) -> list[dict]:
    """Rewrite history.csv atomically with only the complete rows of epochs before epochs_done; returns them."""
    rows = [r for r in read_history(path) if int(r["epoch"]) < epochs_done]
    rows = [r for k, r in enumerate(rows) if int(r["epoch"]) == k]  # no gaps, no repeats
    if not rows:
        path.unlink(missing_ok=True)
        return []
    fields = list(rows[0])
    lines = [",".join(fields)] + [",".join(_csv_value(k, r.get(k, math.nan)) for k in fields) for r in rows]
    write_bytes_atomic(path, ("\r\n".join(lines) + "\r\n").encode())
    return rows


def _csv_value(key: str, value: float) -> str:
    return str(int(value)) if key == "epoch" else repr(float(value))


LR_KEYS = ("learning_rate", "lr")
LR_ALPHA = 0.05  # the run's CosineDecay floor, as a fraction of the initial rate (train/run.py compile_model)


def cosine_lr(learning_rate: float, decay_steps: int, step, alpha: float = LR_ALPHA) -> np.ndarray:
    """keras.optimizers.schedules.CosineDecay's rate at the given step(s), in numpy."""
    done = np.minimum(np.asarray(step, dtype=np.float64), decay_steps) / max(1, decay_steps)
    return learning_rate * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * done)) + alpha)


def run_schedule(folder: Path) -> tuple[float, int, int] | None:
    """(learning rate, epochs, steps per epoch) of the run in folder, from its config.json and split.json; None
    when either is missing or unreadable, or when the run trained on crops (steps then follow the crop count)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
        train = json.loads((Path(folder) / SPLIT_FILE).read_text())["train"]
        if (config.get("crops") or {}).get("classes"):
            return None
        steps = math.ceil(len(train) / int(config["batch_size"]))
        return float(config["learning_rate"]), int(config["epochs"]), steps
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None


def epoch_learning_rates(history: list[dict], schedule=None) -> list[float] | None:
    """The learning rate at the end of each history epoch: the history's own column, else computed from
    schedule = (learning rate, epochs, steps per epoch) of the cosine decay; None when neither is at hand."""
    for key in LR_KEYS:
        if history and all(key in r for r in history):
            return [float(r[key]) for r in history]
    if schedule is None:
        return None
    rate, epochs, steps = schedule
    ends = [(int(r["epoch"]) + 1) * steps for r in history]
    return [float(v) for v in cosine_lr(rate, max(1, epochs * steps), ends)]


def best_epoch(history: list[dict]) -> int | None:
    """The 1-based epoch with the highest finite validation Dice (the first of ties), or None."""
    scores = [(r.get("val_dice", math.nan), -int(r["epoch"])) for r in history]
    finite = [s for s in scores if math.isfinite(s[0])]
    return -max(finite)[1] + 1 if finite else None


def class_names(history: list[dict]) -> list[str]:
    """Classes with a val_dice_<class> column, in column order."""
    return [k[len("val_dice_"):] for k in (history[0] if history else {}) if k.startswith("val_dice_")]


def plot_curves(history: list[dict], path: Path, schedule=None) -> None:
    """Loss, Dice (with each class's validation Dice when there are several) and learning rate per epoch, as a PNG;
    a dotted line and a marker at the best epoch (highest validation Dice).

    schedule: (learning rate, epochs, steps per epoch) of the run's cosine decay, for a history without a
    learning-rate column; by default read from the config.json and split.json beside path. Without either the
    learning-rate panel is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    epochs = [int(r["epoch"]) + 1 for r in history]
    rates = epoch_learning_rates(history, schedule if schedule is not None else run_schedule(path.parent))
    best = best_epoch(history)
    fig, axes = plt.subplots(1, 3 if rates else 2, figsize=(15 if rates else 10, 4), squeeze=False)
    axes = axes[0]
    for ax, key in zip(axes, ("loss", "dice")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [r.get(prefix + key, np.nan) for r in history]
            ax.plot(epochs, values, style, label=f"{'validation' if prefix else 'training'} {key}")
        ax.set_title(key)
    names = class_names(history)
    if len(names) > 1:
        for name in names:
            axes[1].plot(epochs, [r.get(f"val_dice_{name}", np.nan) for r in history], ":", linewidth=1.2,
                         label=f"validation {name}")
    if rates:
        axes[2].plot(epochs, rates, "-", color="tab:purple", label="learning rate (end of epoch)")
        axes[2].set_title("learning rate")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if best is not None:
        score = history[[int(r["epoch"]) + 1 for r in history].index(best)]["val_dice"]
        axes[1].plot([best], [score], "o", color="black", label=f"best epoch {best} ({score:.3f})")
        for ax in axes:
            ax.axvline(best, color="black", linestyle=":", linewidth=0.8, alpha=0.6)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
