"""Atomic map directories: build in a staging directory next to the target, then swap it in.

The target (a previous map) stays intact until the new one is complete: on Linux the swap is a
single ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames with a ``.old`` sibling. A staging
directory left by a killed build is removed by the next build at that path (its pid is dead).
Writers of one target take turns (:class:`WriteLock`), so two appends never lose each other's run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import shutil
from pathlib import Path

from .errors import MapError
from .manifest import MANIFEST

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no inter-process lock
    fcntl = None

log = logging.getLogger(__name__)

_STAGING = ".staging-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class WriteLock:
    """An exclusive lock on ``.<name>.lock`` beside a map, held from before a writer reads the map
    (append) until it has published or discarded its staging directory. A second writer waits."""

    def __init__(self, target: Path):
        target = Path(target).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path = target.parent / f".{target.name}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is writing the map at %s: waiting for it to finish", target)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def staging_dir(target: Path) -> Path:
    """Create a fresh staging directory beside ``target`` (after removing stale ones)."""
    target = Path(target).absolute()
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    path = target.parent / f".{target.name}{_STAGING}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def check_replaceable(target: Path) -> None:
    """Refuse to replace something that is not a map (a file, a non-empty non-map directory)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise MapError(f"{target} exists and is not a map directory; choose another --out")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise MapError(f"{target} is a non-empty directory that is not a map; refusing to replace it")


def clean_stale(target: Path) -> list[Path]:
    """Remove staging directories of ``target`` whose building process no longer exists."""
    removed = []
    for p in target.parent.glob(f".{target.name}{_STAGING}*"):
        pid = p.name[len(f".{target.name}{_STAGING}"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    old = target.parent / f".{target.name}.old"
    if old.exists() and target.exists():
        shutil.rmtree(old, ignore_errors=True)
    return removed


def publish(staging: Path, target: Path) -> None:
    """Make ``staging`` the map at ``target``; the previous map (if any) is removed afterwards."""
    target = Path(target).absolute()
    _fsync_dir(staging)
    if target.exists():
        if not _exchange(staging, target):
            old = target.parent / f".{target.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)  # put the previous map back
                raise
            staging = old
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous map
    else:
        os.rename(staging, target)
    try:  # the new map is in place and complete: a failed directory sync only risks durability
        _fsync_dir(target.parent)
    except OSError as exc:
        log.warning("published map %s, but syncing %s failed (%s): the swap may not survive a power loss",
                    target, target.parent, exc)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
