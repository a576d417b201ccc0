"""Restartable batch work over a folder of images (predict.py, --rank): the output folder's lock, a journal of the
images finished so far that a restart continues from, and the summary of what was done, skipped and failed."""

from __future__ import annotations

import csv
import io
import json
import os
from contextlib import ExitStack
from pathlib import Path

from keras_unet.config import settings_differences
from keras_unet.errors import ConfigError, DataError, KerasUnetError
from keras_unet.io.files import (DiskFullError, check_out_dir, hold_lock, is_disk_full, remove_temporaries,
                                 write_bytes_atomic)
from keras_unet.run_folder import OUT_LOCK, PROGRESS_FILE, SUMMARY_FILE

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
COUNTED = (DONE, SKIPPED, FAILED)


class Batch:
    """One command's pass over a list of images into out: what earlier runs finished, and a record of this one.

    Use as a context manager: it holds out's lock (a second process refuses), and on leaving writes out/summary.csv
    (whatever happened: a stop for a full disk too); after a complete pass the journal is rewritten compactly."""

    def __init__(self, out, command: str, settings: dict, overwrite: bool = False):
        self.out, self.command = Path(out).expanduser(), command
        self.settings = json.loads(json.dumps(settings))  # tuples as lists: comparable with the saved ones
        self.overwrite = overwrite
        self.earlier: dict = {}  # image -> its record from an earlier run of the same command
        self.records: dict = {}  # image -> this run's record
        self._stack = ExitStack()
        self._journal = None

    def __enter__(self) -> "Batch":
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder")
        self._stack.enter_context(hold_lock(out / OUT_LOCK, f"another {self.command} is writing this folder"))
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        return self

    def _close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        self._stack.close()

    def _open(self) -> None:
        out = self.out
        journal = out / PROGRESS_FILE
        if self.overwrite:
            journal.unlink(missing_ok=True)
        elif journal.is_file():
            settings, self.earlier = read_progress(out)
            differences = (settings_differences(settings, self.settings) if isinstance(settings, dict)
                           else ["the settings of the earlier run cannot be read"])
            if differences:
                raise ConfigError(f"{out}: holds the results of a {self.command} with other settings "
                                  f"({'; '.join(differences)}; the folder's value first); use the same command, "
                                  "another --out, or --overwrite to redo every image")
        else:
            check_out_dir(out, False, allowed=(OUT_LOCK,))
        remove_temporaries(out)  # a killed run's unfinished files (never under an output's own name)
        torn = journal.is_file() and not journal.read_bytes().endswith(b"\n")  # killed mid-line: end that line
        fresh = not journal.exists()
        self._journal = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        if torn:
            os.write(self._journal, b"\n")
        if fresh:
            self._append({"command": self.command, "settings": self.settings})

    def _append(self, value: dict) -> None:
        line = (json.dumps(value) + "\n").encode("utf-8")
        try:
            os.write(self._journal, line)  # one write: a kill tears one line at most
        except OSError as error:
            if is_disk_full(error):
                raise DiskFullError(self.out / PROGRESS_FILE, len(line)) from None
            raise DataError(self.out / PROGRESS_FILE, f"cannot write the file ({error.strerror or error})") from None

    def finished(self, image) -> dict | None:
        """An earlier run's record of image when it was done (else None: the image is to be worked on)."""
        record = self.earlier.get(str(image))
        return record if record and record.get("status") == DONE else None

    def record(self, image, status: str, reason: str = "", **extra) -> None:
        """Note one image's outcome; written to the journal at once (call it after the image's outputs exist)."""
        entry = {"image": str(image), "status": status, "reason": reason, **extra}
        self.records[str(image)] = entry
        if self._journal is not None:
            self._append(entry)

    def counts(self) -> dict:
        """{'done': n, 'skipped': n, 'failed': n} of this run's records."""
        return count(self.records.values())

    def __exit__(self, kind, error, traceback) -> None:
        try:
            try:
                entries = list(self.records.values())
                entries += [e for image, e in self.earlier.items() if image not in self.records and e["status"] == DONE]
                entries.sort(key=lambda e: e["image"])
                write_bytes_atomic(self.out / SUMMARY_FILE, summary_csv(entries).encode("utf-8"))
                if kind is None:  # the journal, compacted: one line per image
                    lines = [{"command": self.command, "settings": self.settings}, *entries]
                    write_bytes_atomic(self.out / PROGRESS_FILE, "".join(json.dumps(e) + "\n" for e in lines).encode())
            except KerasUnetError:
                if kind is None:
                    raise  # else the journal keeps the record, and the first error is the one to show
        finally:
            self._close()


def count(entries) -> dict:
    """{'done': n, 'skipped': n, 'failed': n} of a list of records."""
    counts = {DONE: 0, SKIPPED: 0, FAILED: 0}
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return counts


def summary_csv(entries) -> str:
    """CSV text of the records: image, status (done, skipped, failed), reason, score (--rank)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "status", "reason", "score"])
    for entry in entries:
        score = entry.get("score")
        writer.writerow([entry["image"], entry["status"], entry.get("reason", ""),
                         "" if score is None else f"{score:.6f}"])
    return buffer.getvalue()


def read_progress(out) -> tuple[dict | None, dict]:
    """(the settings, {image: record}) of an output folder's journal (a torn last line from a kill is left out)."""
    out = Path(out)
    settings, records = None, {}
    try:
        lines = (out / PROGRESS_FILE).read_bytes().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict) and "settings" in entry and "image" not in entry:
            settings = entry["settings"] if settings is None else settings
        elif isinstance(entry, dict) and isinstance(entry.get("image"), str) and entry.get("status") in COUNTED:
            records[entry["image"]] = entry
    return settings, records
