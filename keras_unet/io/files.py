"""Files and folders: reading bytes, atomic writes, output-folder guards, sizes and hashes (standard library only)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from keras_unet.errors import ConfigError, DataError, KerasUnetError


_KINDS = ((stat.S_ISDIR, "is a folder, not an image file"), (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
          (stat.S_ISCHR, "is a character device, not a regular file"),
          (stat.S_ISBLK, "is a block device, not a regular file"), (stat.S_ISSOCK, "is a socket, not a regular file"))


def not_regular(mode: int) -> str | None:
    """Why a file of this st_mode cannot be read as a file ('is a FIFO (named pipe), ...'), None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((problem for test, problem in _KINDS if test(mode)), "is not a regular file")


def check_regular(path) -> os.stat_result:
    """The stat of a regular file (or a link to one); DataError naming anything else (a FIFO, device, folder...)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, ValueError) as error:
        raise DataError(path, f"cannot read the file ({getattr(error, 'strerror', None) or error})") from None
    problem = not_regular(status.st_mode)
    if problem:
        raise DataError(path, problem)
    return status


def read_bytes(path) -> bytes:
    """A file's bytes, raising DataError for a missing, unreadable or non-regular file (never blocks on a FIFO)."""
    path = Path(path)
    check_regular(path)
    try:
        # O_NONBLOCK: should the name turn into a FIFO after the check, opening it still returns at once
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as error:
        raise DataError(path, f"cannot read the file ({getattr(error, 'strerror', None) or error})") from None
    with os.fdopen(fd, "rb") as handle:
        problem = not_regular(os.fstat(fd).st_mode)
        if problem:
            raise DataError(path, problem)
        try:
            return handle.read()
        except MemoryError:
            raise DataError(path, f"too large to read into memory ({human_bytes(os.fstat(fd).st_size)})") from None
        except OSError as error:
            raise DataError(path, f"cannot read the file ({error.strerror or error})") from None


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(KerasUnetError):
    """A write that found no space left: names the folder, the file and how much space the write needed."""

    def __init__(self, path, needed: int | None = None, at_least: bool = False):
        path = Path(path)
        self.folder, self.needed = path.parent, needed
        amount = "more space" if needed is None else f"{'at least ' if at_least else ''}{human_bytes(needed)}"
        free = free_bytes(path.parent)
        there = "" if free is None else f", {human_bytes(free)} free there"
        super().__init__(f"{path.parent}: no space left on the disk: writing {path.name} needed {amount}{there}; "
                         "free some space and run the same command again (finished files are kept as they were)")


def is_disk_full(error: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) is 'no space left on device' or 'disk quota exceeded'."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in _DISK_FULL):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def free_bytes(folder) -> int | None:
    """Free space of the file system holding folder (or its nearest existing parent), None when unknown."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")  # _temporary_name's pattern (the default suffix)


def remove_temporaries(folder) -> int:
    """Delete the temporary files atomic writes left under folder when their process was killed; returns how many.

    Only for a folder this process holds the lock of: another live writer's temporary files look the same."""
    removed = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if _TEMPORARY.match(name):
                Path(root, name).unlink(missing_ok=True)
                removed += 1
    return removed


def _size(path: Path) -> int:
    try:
        return folder_bytes(path) if path.exists() else 0
    except OSError:
        return 0


@contextmanager
def atomic_path(path, suffix: str = ".tmp", needed: int | None = None):
    """Yield a temporary path beside `path` for a writer to fill; rename it into place only if the block succeeds.

    suffix: the temporary file's ending, for writers that choose the format by it (".keras", ".weights.h5").
    A full disk raises DiskFullError (needed: the write's size when known); the temporary file is always removed
    and an earlier file at `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        written = _size(tmp)
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            if needed is not None:
                raise DiskFullError(path, needed) from None
            raise DiskFullError(path, max(written, _size(path)), at_least=True) from None
        raise


def write_bytes_atomic(path, data: bytes, durable: bool = False) -> None:
    """Write bytes through a temporary file in the same folder and os.replace (durable: fsync before)."""
    path = Path(path)
    try:
        with atomic_path(path, needed=len(data)) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
    except OSError as error:
        raise DataError(path, f"cannot write the file ({error.strerror or error})") from None


class LockedError(KerasUnetError):
    """Another live process holds a lock file; names the file's folder and that process."""

    def __init__(self, path, owner: str, what: str):
        self.path, self.owner = Path(path), owner
        super().__init__(f"{Path(path).parent}: {what} ({owner or 'a process whose id could not be read'}); "
                         "wait for it to finish, or use another folder")


def lock_owner(path) -> str:
    """Who holds a lock file, as it says ('process 1234 on host x since 2026-12-01 13:20:01'), '' if unreadable."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        return f"process {int(info['pid'])} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _open_lock(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(path) from None
        raise DataError(path, f"cannot create the lock file ({error.strerror or error})") from None


@contextmanager
def hold_lock(path, what: str = "another process holds this folder", wait: bool = False, on_wait=None):
    """Hold an exclusive lock file (fcntl.flock) that says which process holds it; removed on release.

    The kernel frees the lock when its process dies, so a stale file left by a killed process is taken over.
    wait False: a live holder raises LockedError(what, its pid and host); wait True: on_wait(owner) is called
    once and the lock is waited for. Without fcntl (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    while True:
        fd = _open_lock(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = lock_owner(path)
                if not wait:
                    raise LockedError(path, owner, what) from None
                if on_wait is not None:
                    on_wait(owner)
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not removed by the holder meanwhile
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        except OSError:  # a full disk: the lock holds all the same, only its owner's name is missing
            pass
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def write_json_atomic(path, data) -> None:
    """Write JSON (indented, UTF-8) atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def is_inside(path, folder) -> bool:
    """Whether path lies in folder (or is it), symbolic links resolved on both sides."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(folder)))
    except (OSError, ValueError):
        return False


def is_file(path) -> bool:
    """Whether path names a regular file (or a link to one); False for names the system cannot even look up."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, a name too long, a NUL byte: reading it reports the problem
        return False


def check_out_dir(out, overwrite: bool, what: str = "output folder", keep=None, allowed=()) -> Path:
    """Refuse an output folder that is a file, holds `keep` (the source), or already holds files (unless overwrite).

    allowed: names of files that may already be there (those the command itself writes)."""
    out = Path(out).expanduser()
    if keep is not None and is_inside(keep, out):
        raise ConfigError(f"{out}: holds the source {keep}; write somewhere else")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not overwrite and out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in set(allowed))
        if foreign:
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(f"{out}: {what} already exists and holds files ({listed}); use another --out, "
                              "or --overwrite to replace them")
    return out


def prepare_out_dir(out, overwrite: bool, what: str = "output folder") -> Path:
    """Create an output folder after check_out_dir; returns it."""
    out = check_out_dir(out, overwrite, what)
    out.mkdir(parents=True, exist_ok=True)
    return out


def replace_folder(tmp: Path, out: Path) -> None:
    """Put a finished folder at out, replacing an old one only once the new one is complete."""
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old") if out.exists() else None
    if old:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old:
            os.replace(old, out)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_folder(out, fill, check=None) -> None:
    """fill(a temporary folder beside out), check(), then rename it to out; on any failure nothing is left behind
    and an earlier out is kept as it was (a full disk raises DiskFullError)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fill(tmp)
        if check is not None:
            check()
        replace_folder(tmp, out)
    except BaseException as error:
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(error):  # named after out, not the temporary folder the write was in
            raise DiskFullError(out, max(written, _size(out)), at_least=True) from None
        raise


def folder_bytes(path) -> int:
    """Size of a file, or of all files under a folder, in bytes."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def human_bytes(n: int) -> str:
    """'812 B', '35.2 KiB', '7.41 MiB'."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 ** 2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 ** 2:.2f} MiB"
