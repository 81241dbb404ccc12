"""Newest-frame-only inference on one worker thread.

Each camera has a single slot; :meth:`LatestFrameWorker.put` (called from the executor, never
blocking) replaces the pending frame, so memory stays bounded however fast frames arrive and a
frame that is replaced before the worker took it counts as dropped. The worker takes pending frames
round-robin over cameras and calls ``handle(camera, item)`` outside the lock.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class LatestFrameWorker:
    def __init__(self, num_cameras: int, handle: Callable[[int, Any], None], on_error: Callable[[BaseException], None]):
        self._slots: list[Any] = [None] * num_cameras
        self._handle = handle
        self._on_error = on_error
        self._cond = threading.Condition()
        self._stop = False
        self._next = 0
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="vlad_inference", daemon=True)
        self._thread.start()

    def put(self, camera: int, item: Any) -> bool:
        """Make ``item`` the camera's pending frame; True when it replaced an unprocessed one."""
        with self._cond:
            replaced = self._slots[camera] is not None
            self._slots[camera] = item
            self._cond.notify()
        return replaced

    def idle(self) -> bool:
        with self._cond:
            return not self._busy and all(s is None for s in self._slots)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the frame in progress; pending frames are discarded. True when joined."""
        with self._cond:
            self._stop = True
            self._slots = [None] * len(self._slots)
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _take(self) -> tuple[int, Any] | None:
        n = len(self._slots)
        for i in range(n):
            cam = (self._next + i) % n
            if self._slots[cam] is not None:
                item, self._slots[cam] = self._slots[cam], None
                self._next = (cam + 1) % n
                return cam, item
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                job = self._take()
                while job is None and not self._stop:
                    self._cond.wait()
                    job = self._take()
                if self._stop:
                    return
                self._busy = True
            try:
                self._handle(*job)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the worker
                self._on_error(exc)
