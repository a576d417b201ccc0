"""The masks cache: where a data folder's generated images and masks live, and the index that says what is fresh."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from keras_unet.io.files import hold_lock, read_bytes, write_bytes_atomic

CACHE_FORMAT = 2  # bump when cached files would come out differently (2: Labelme's pixel convention, Pillow drawing)


INDEX_NAME = "index.json"


IMAGES_FOLDER = "images"


LOCK_NAME = ".lock"  # held while a process checks and fills a cache folder (io.files.hold_lock)


@contextmanager
def filling(cache: Path, log=None):
    """Hold a cache folder's lock while its entries are checked and written; another process filling the same
    folder waits (and is told for whom), then finds the entries fresh. Each file is written atomically besides."""
    def waiting(owner):
        if log:
            log(f"waiting for {owner or 'another process'} to finish filling the masks cache {cache}")

    with hold_lock(Path(cache) / LOCK_NAME, wait=True, on_wait=waiting):
        yield


def default_cache_root() -> Path:
    """$KERAS_UNET_CACHE, else ~/.cache/keras_unet."""
    value = os.environ.get("KERAS_UNET_CACHE", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "keras_unet"


def cache_folder(data_dir, classes, line_width: int = 10, cache_dir=None) -> Path:
    """The cache subfolder for one data folder, class list and line width."""
    data_dir = Path(os.path.abspath(Path(data_dir).expanduser()))
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    key = json.dumps([CACHE_FORMAT, str(data_dir), list(classes), int(line_width)])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in data_dir.name) or "data"
    return Path(os.path.abspath(root)) / f"{name}-{digest}"


def fingerprint(path) -> dict:
    """Size, modification time and SHA-256 of a file."""
    path = Path(path)
    data = read_bytes(path)
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest()}


def _same(a, b) -> bool:
    """Same content: size and hash agree (a new mtime alone, e.g. after `touch`, is not a change)."""
    return bool(a) and bool(b) and a.get("size") == b.get("size") and a.get("sha256") == b.get("sha256")


def still_valid(entry, json_print, files) -> bool:
    """Whether a Labelme cache entry still matches its JSON and image, and its cached files exist."""
    if not entry or not _same(entry.get("json"), json_print):
        return False
    if not all(path.is_file() for path in files):
        return False
    if entry.get("image_file"):
        image_file = Path(entry["image_file"])
        if not image_file.is_file() or not _same(entry.get("image"), fingerprint(image_file)):
            return False
    return True


def read_index(cache: Path, classes, line_width) -> dict:
    """The cache index's entries for these classes and line width (empty when absent, stale or unreadable)."""
    try:
        index = json.loads((cache / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        return {}
    if index.get("classes") != list(classes) or index.get("line_width") != line_width:
        return {}
    entries = index.get("entries")
    return entries if isinstance(entries, dict) else {}


def write_index(cache: Path, classes, line_width, entries: dict, data_dir) -> None:
    """Write the cache index atomically."""
    index = {
        "format": CACHE_FORMAT,
        "data_dir": str(data_dir),
        "classes": list(classes),
        "line_width": line_width,
        "entries": entries,
    }
    write_bytes_atomic(cache / INDEX_NAME, json.dumps(index, indent=1).encode("utf-8"))


def remove_stale(cache: Path, classes, old: dict, entries: dict) -> None:
    """Delete the cached files of entries that are gone."""
    for stem in set(old) - set(entries):
        for folder in [IMAGES_FOLDER, *classes]:
            (cache / folder / f"{stem}.png").unlink(missing_ok=True)


def spacing_entry(spacing) -> list[float] | None:
    """A pixel spacing as the index stores it."""
    return None if spacing is None else [float(v) for v in spacing]


def entry_spacing(entry: dict) -> tuple[float, float] | None:
    """A cache entry's pixel spacing (row, column) in mm, None when its image has none (or an older cache)."""
    value = entry.get("spacing")
    return (float(value[0]), float(value[1])) if isinstance(value, list) and len(value) == 2 else None
