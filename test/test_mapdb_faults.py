"""Map writes under faults: a full disk (ENOSPC) and an I/O error (EIO) at every write step of
every operation that writes a map leave the previous map byte-identical and opening, and no
staging directory behind. Every map here stores keyframe views (``views.sqlite``), so its writes
are among the steps.

The faults are injected at the low-level write calls the writer makes (:data:`WRITE_STEPS`): from
the N-th call of one step on, every call fails, as on a disk that stays full. A recording run of
each operation lists its write calls by the package function making them; a call site that is not
in :data:`KNOWN_SITES` fails :func:`test_every_write_step_is_known_and_covered`, so a new write step
is noticed. A new writing operation joins :data:`OPERATIONS` (e.g. ``LiveMap.save``).
"""
from __future__ import annotations

import builtins
import errno
import importlib.util
import os
import pathlib
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import pytest

from test_mapdb_storage import build, staging_dirs
from vlad_localization.mapdb import MapDatabase, MapError, merge_maps, reindex_map, verify_map
from vlad_localization.mapdb import atomic

PACKAGE = str(Path(__import__("vlad_localization").__file__).parent)
MESSAGES = {errno.ENOSPC: "database or disk is full", errno.EIO: "disk I/O error"}  # SQLite's words


# ---------------------------------------------------------------------------- operations
def op_build(target: Path, sources: dict) -> None:
    build(target, 5, start=500)  # a rebuild over the previous map


def op_build_new(target: Path, sources: dict) -> None:
    build(target.parent / "new_map", 4, start=700)  # a first build beside the previous map


def op_append(target: Path, sources: dict) -> None:
    build(target, 3, start=600, append=True)


def op_merge(target: Path, sources: dict) -> None:
    merge_maps(target, [sources["a"], sources["b"]])


def op_reindex(target: Path, sources: dict) -> None:
    reindex_map(target, "HNSW16")


def op_live_save(target: Path, sources: dict) -> None:
    """LiveMap.save over the previous map (the in-memory map, where mapdb/live.py exists)."""
    from vlad_localization.mapdb.live import LiveMap

    with MapDatabase.open(sources["a"]) as db:
        live, m = LiveMap(db.manifest.model), db.manifest
        for i in range(db.size):
            live.add(np.asarray(db.global_desc[i]), {p: a[0] for p, a in db.patches([i]).items()}, db.keyframe(i),
                     thumbnail=db.table.thumbnail_bytes(i), grid=m.grid, image_size=m.image_size, view=db.view(i))
    live.save(target, ["live"])


# name -> fn(target map directory, {"a": map, "b": map} read-only source maps); each writes ``target``
OPERATIONS = {"build": op_build, "build_new": op_build_new, "append": op_append, "merge": op_merge,
              "reindex": op_reindex}
if importlib.util.find_spec("vlad_localization.mapdb.live") is not None:
    OPERATIONS["live_save"] = op_live_save


# ---------------------------------------------------------------------------- fault injection
class Faults:
    """Wraps the low-level write calls; records (step, site) per call, fails one step from a call on."""

    def __init__(self, step: str | None = None, first_failing_call: int = 0, err: int = errno.ENOSPC,
                 times: int | None = None):
        self.step, self.first, self.err, self.times = step, first_failing_call, err, times
        self.calls: list[tuple[str, str]] = []
        self.failed = 0

    def hit(self, step: str, exc_type=OSError) -> None:
        self.calls.append((step, call_site()))
        if (step == self.step and sum(s == step for s, _ in self.calls) > self.first
                and (self.times is None or self.failed < self.times)):
            self.failed += 1
            if exc_type is OSError:
                raise OSError(self.err, os.strerror(self.err))
            if exc_type is sqlite3.OperationalError:
                raise sqlite3.OperationalError(MESSAGES[self.err])
            raise RuntimeError(f"Error in faiss::FileIOWriter: write error ({os.strerror(self.err)})")


def call_site() -> str:
    """The innermost package function on the stack: 'module.Class.function'."""
    frame = sys._getframe(2)
    while frame is not None and not frame.f_code.co_filename.startswith(PACKAGE):
        frame = frame.f_back
    if frame is None:
        return "?"
    module = frame.f_globals.get("__name__", "?").replace("vlad_localization.", "")
    return f"{module}.{frame.f_code.co_qualname}"


class FaultyFile:
    """A file opened for writing whose write / flush go through :class:`Faults`."""

    def __init__(self, f, faults: Faults):
        self._f, self._faults = f, faults

    def write(self, data):
        self._faults.hit("file.write")
        return self._f.write(data)

    def flush(self):
        self._faults.hit("file.flush")
        return self._f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def faulty_connection(faults: Faults):
    class Connection(sqlite3.Connection):
        def execute(self, sql, *args):
            if not sql.lstrip().upper().startswith(("SELECT", "PRAGMA QUERY_ONLY", "PRAGMA QUICK_CHECK")):
                faults.hit("sqlite.execute", sqlite3.OperationalError)
            return super().execute(sql, *args)

        def executemany(self, sql, *args):
            faults.hit("sqlite.executemany", sqlite3.OperationalError)
            return super().executemany(sql, *args)

        def executescript(self, sql):
            faults.hit("sqlite.executescript", sqlite3.OperationalError)
            return super().executescript(sql)

    return Connection


@contextmanager
def injected(faults: Faults):
    """Every low-level write step of the map writer goes through ``faults`` (the WRITE_STEPS)."""
    real_open, real_connect = builtins.open, sqlite3.connect

    def wrap(step, fn, exc_type=OSError):
        def call(*args, **kw):
            faults.hit(step, exc_type)
            return fn(*args, **kw)
        return call

    def open_(file, mode="r", *args, **kw):
        if any(c in mode for c in "wax+"):
            faults.hit("open")
            return FaultyFile(real_open(file, mode, *args, **kw), faults)
        return real_open(file, mode, *args, **kw)

    def os_open(path, flags, *args, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and path != os.devnull:  # (subprocesses)
            faults.hit("os.open")
        return real_os_open(path, flags, *args, **kw)

    real_os_open = os.open
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(builtins, "open", open_)
        mp.setattr(os, "open", os_open)
        for step, owner, name in (("mkdir", pathlib.Path, "mkdir"), ("copy", shutil, "copy2"),
                                  ("fsync", os, "fsync"), ("replace", os, "replace"), ("rename", os, "rename")):
            mp.setattr(owner, name, wrap(step, getattr(owner, name)))
        mp.setattr(atomic, "_exchange", wrap("renameat2", atomic._exchange))
        mp.setattr(faiss, "write_index", wrap("faiss.write_index", faiss.write_index, RuntimeError))
        mp.setattr(sqlite3, "connect", lambda *a, **kw: real_connect(*a, factory=faulty_connection(faults), **kw))
        yield faults
    finally:
        mp.undo()


# The write steps and, per step, the package functions that make them (a new one fails the test).
KNOWN_SITES = {
    "mkdir": {"mapdb.atomic.WriteLock.__init__", "mapdb.atomic.staging_dir"},
    "os.open": {"mapdb.atomic.WriteLock.__init__"},
    "copy": {"mapdb.writer.MapWriter._start_append"},
    "open": {"mapdb.patch_store.RowWriter.__init__", "mapdb.manifest.Manifest.write",
             "mapdb.writer.MapWriter._start_append"},  # shutil.copy2's destination files
    "file.write": {"mapdb.patch_store.RowWriter.append", "mapdb.manifest.Manifest.write"},
    "file.flush": {"mapdb.patch_store.RowWriter.close", "mapdb.manifest.Manifest.write"},
    "fsync": {"mapdb.patch_store.RowWriter.close", "mapdb.manifest.Manifest.write", "mapdb.atomic._fsync_dir"},
    "sqlite.executescript": {"mapdb.metadata.connect"},  # keyframes.sqlite and views.sqlite
    "sqlite.executemany": {"mapdb.metadata.KeyframeTable.add", "mapdb.views.ViewTable.add"},
    "faiss.write_index": {"mapdb.index.GlobalIndex.save"},
    "replace": {"mapdb.manifest.Manifest.write"},
    "renameat2": {"mapdb.atomic.publish"},
    "rename": {"mapdb.atomic.publish"},
}
WRITE_STEPS = sorted(KNOWN_SITES)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """A previous map (template, copied per case) and two source maps for merge."""
    work = tmp_path_factory.mktemp("faults")
    build(work / "previous", 6)
    build(work / "a", 4, start=100)
    build(work / "b", 3, start=200)
    return work


def fresh_previous(maps: Path, tmp_path: Path) -> Path:
    target = tmp_path / "map"
    shutil.copytree(maps / "previous", target)
    return target


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def beside(path: Path) -> list[str]:
    """What is in the map's folder (staging directories, new maps, ``.old``), writers' locks aside."""
    return sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock"))


def record(op: str, maps: Path, tmp_path: Path) -> Faults:
    target = fresh_previous(maps, tmp_path / f"record-{op}")
    with injected(Faults()) as faults:
        OPERATIONS[op](target, {"a": maps / "a", "b": maps / "b"})
    verify_map(target)
    return faults


# ---------------------------------------------------------------------------- tests
def test_every_write_step_is_known_and_covered(maps, tmp_path):
    seen: dict[str, set[str]] = {}
    for op in OPERATIONS:
        for step, site in record(op, maps, tmp_path).calls:
            seen.setdefault(step, set()).add(site)
    unknown = {step: sites - KNOWN_SITES.get(step, set()) for step, sites in seen.items()}
    assert not any(unknown.values()), f"new write step(s): add them to KNOWN_SITES: {unknown}"
    assert set(seen) == set(WRITE_STEPS), f"steps never reached: {set(WRITE_STEPS) - set(seen)}"
    assert "mapdb.views.ViewTable.add" in seen["sqlite.executemany"], "the keyframe views are written here"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_a_fault_at_any_write_step_leaves_the_previous_map(maps, tmp_path, op, err):
    """For each step the operation makes: fail it from its first, middle and last call on."""
    calls = record(op, maps, tmp_path).calls
    cases = 0
    for step in WRITE_STEPS:
        n = sum(s == step for s, _ in calls)
        for first in sorted({0, n // 2, n - 1}) if n else ():
            target = fresh_previous(maps, tmp_path / f"{step}-{first}")
            before, folder = snapshot(target), beside(target)
            faults = Faults(step, first, err)
            with injected(faults):
                try:
                    OPERATIONS[op](target, {"a": maps / "a", "b": maps / "b"})
                except (MapError, OSError) as exc:  # the CLI's clean one-line errors
                    failed = exc
                else:
                    failed = None
            where = f"{op}: {os.strerror(err)} at {step} call {first} of {n}"
            assert faults.failed, where
            assert not any(".staging-" in name for name in beside(target)), f"{where}: staging left behind"
            if failed is None:  # only the directory sync after the swap may fail without an error
                assert faults.calls[-1] == ("fsync", "mapdb.atomic._fsync_dir"), where
                verify_map(target.parent / "new_map" if op == "build_new" else target)
            else:
                assert snapshot(target) == before, f"{where}: previous map changed ({failed})"
                assert beside(target) == folder, f"{where}: {beside(target)} left beside the map"
                with MapDatabase.open(target) as db:
                    assert db.size == 6, where
            cases += 1
    assert cases >= 20
    # the writer's lock was released every time: a write without faults goes through
    OPERATIONS[op](target, {"a": maps / "a", "b": maps / "b"})
    verify_map(target)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_without_renameat2_a_failed_swap_puts_the_previous_map_back(maps, tmp_path, monkeypatch, err):
    """The two-rename fallback (no RENAME_EXCHANGE): the second rename fails -> the first is undone."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = fresh_previous(maps, tmp_path)
    before = snapshot(target)
    faults = Faults("rename", 1, err, times=1)  # the rename back works
    with injected(faults), pytest.raises(MapError, match="nothing was changed"):
        op_append(target, {})
    assert faults.failed and snapshot(target) == before and not staging_dirs(target)
    assert not (target.parent / ".map.old").exists()


@pytest.mark.parametrize("step", ["file.write", "sqlite.executemany", "faiss.write_index", "fsync"])
def test_the_cli_says_what_failed_in_one_line(maps, tmp_path, capsys, step):
    from vlad_localization.cli.main import main

    with injected(Faults(step, 0, errno.ENOSPC)):
        rc = main(["merge-maps", str(tmp_path / "merged"), str(maps / "a"), str(maps / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and ("No space left on device" in err or "disk is full" in err), err
    assert not (tmp_path / "merged").exists() and not staging_dirs(tmp_path / "merged")
