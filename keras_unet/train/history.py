"""The training history (history.csv) and the backup's epoch count: read, repair after a kill, plot."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np

from keras_unet.io.files import atomic_path, write_bytes_atomic

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


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and Dice per epoch, training and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "dice")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [r.get(prefix + key, np.nan) for r in history]
            ax.plot(epochs, values, style, label=f"{'validation' if prefix else 'training'} {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
