"""The node's inference process: the :class:`~vlad_localization.detector.LoopClosureDetector`
(model, map, this run's keyframes, verification) in a process of its own, which owns the device.

The node (:mod:`vlad_localization.ros.node`) does ROS I/O only; rclpy's executor and the model no
longer share a GIL. :class:`InferenceProcess` is the node's handle: it starts :func:`serve` with
multiprocessing's ``spawn`` method, writes each frame into the camera's shared-memory slot
(:mod:`~vlad_localization.ros.frame_slots`) and sends its reference over a pipe; the results
(:class:`~vlad_localization.detector.FrameResult` as a whole, the match image when asked for) come
back over the same pipe to a reader thread that hands them to the node. ``~/save_map`` and
``~/reload_map`` are forwarded as :meth:`InferenceProcess.call`, every-frame parameters as
:meth:`InferenceProcess.apply_overrides`. Newest frame only: a frame superseded before the process
took it is reported dropped.

The process ignores SIGINT (the node stops it: :meth:`InferenceProcess.stop` asks, then SIGTERM,
then SIGKILL) and exits by itself when the node's process is gone (it polls its parent's pid), so
no process is left behind. When it dies (out of memory, a segfault, killed), ``on_exit`` gets the
cause (:func:`exit_cause`) and the node decides about a restart.

``isolate=False`` runs :func:`serve` on a thread of the node's process instead (same slots, same
pipe, no spawn): for tests whose detector factory is a closure. Nothing here imports rclpy.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

from vlad_localization.ros.frame_slots import FrameRef, FrameSlots, SlotReader

PARENT_POLL_S = 0.2  # the process checks this often that the node still runs
STOP_GRACE_S = 0.3  # stop: a "stop" request, then SIGTERM after this long, then SIGKILL
KILL_WAIT_S = 0.5


def load_detector(cfg, checkpoint: str, map_path: str):
    """The default detector factory: :meth:`LoopClosureDetector.from_config` (the map is fully
    verified first when ``map.verify_on_open`` is set)."""
    from vlad_localization.detector import LoopClosureDetector

    return LoopClosureDetector.from_config(cfg, checkpoint, map_path or None)


@dataclass(frozen=True)
class InferenceSpec:
    """What the process loads: ``factory(config, checkpoint, map_path)`` (a module-level function:
    it is pickled by reference for ``spawn``)."""

    factory: Callable
    config: Any
    checkpoint: str
    map_path: str


@dataclass(frozen=True)
class FrameMeta:
    """A frame's small companions (pickled with its :class:`FrameRef`): stamp, odometry pose,
    camera model, stereo calibration (:class:`~vlad_localization.ros.depth_input.StereoPair`
    without its image), and whether the match image is wanted."""

    stamp_ns: int
    pose: Any = None
    camera_model: Any = None
    stereo: Any = None
    match_image: bool = False


class InferenceError(RuntimeError):
    """The process failed to load, died, or did not answer."""


def exit_cause(exitcode: int | None) -> str:
    """An exit code as words: ``killed by SIGKILL (signal 9: e.g. out of memory)``, ``exit code 1``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {signal.SIGKILL: ": killed, e.g. out of memory", signal.SIGSEGV: ": a crash in native code"}
        return f"killed by {name} (signal {-exitcode}{hint.get(-exitcode, '')})"
    return f"exit code {exitcode}"


# -- the inference process ---------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Exit at once when the node's process is gone (even SIGKILLed: no pipe EOF while busy)."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _device_info(detector, config) -> dict[str, Any]:
    device = str(getattr(detector, "device", None) or config.model.device)
    info = {"device": device, "map_size": detector.map.size if detector.map is not None else 0,
            "stats": detector.stats(), "gpu_memory_mb": "n/a", "pid": os.getpid()}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            info["gpu_memory_mb"] = f"{torch.cuda.memory_allocated(device) / 2**20:.1f}"
    return info


def _match_image(result, rgb):
    """The query beside the best candidate's thumbnail with their matches (or None without one)."""
    import numpy as np

    from vlad_localization.matching.plot import draw_matches

    thumbnail = result.match_thumbnail()
    if thumbnail is None:
        return None
    best, none = result.candidates[0], np.zeros((0, 2))
    return draw_matches(rgb, thumbnail, none if best.query_keypoints is None else best.query_keypoints,
                        none if best.map_keypoints is None else best.map_keypoints,
                        image_hw=tuple(result.query.network_size))


class _Server:
    """The process's loop: newest frame per camera, round-robin; requests between frames."""

    def __init__(self, detector, config, conn):
        self.detector, self.conn = detector, conn
        self.base_config = config
        self.reader = SlotReader()
        self.pending: dict[int, tuple[FrameRef, FrameMeta]] = {}
        self.next = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            self._receive(block=not self.pending)
            job = self._take()
            if job is not None and not self.stopping:
                self._process(*job)
        self.reader.close()

    def _receive(self, block: bool) -> None:
        """Handle every message waiting (and wait for one when idle); EOF: the node is gone."""
        while self.conn.poll(None if block else 0):
            block = False
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.stopping = True
                return
            kind = message[0]
            if kind == "frame":
                ref, meta = message[1], message[2]
                if ref.camera in self.pending:
                    self.conn.send(("dropped", ref.camera))
                self.pending[ref.camera] = (ref, meta)
            elif kind == "overrides":
                from vlad_localization.config import apply_overrides

                self.detector.config = apply_overrides(self.base_config, message[1], where="node parameters")
            elif kind == "call":
                self._call(*message[1:])
            elif kind == "stop":
                self.stopping = True
                return

    def _take(self):
        cameras = sorted(self.pending)
        if not cameras:
            return None
        camera = next((c for c in cameras if c >= self.next), cameras[0])
        self.next = camera + 1
        return self.pending.pop(camera)

    def _call(self, call_id: int, name: str, args: tuple) -> None:
        try:
            if name == "save_map":
                value = self.detector.save_map(*args).keyframes
            elif name == "reload_map":
                value = self.detector.reload_map(*args).size
            else:
                raise ValueError(f"unknown request {name!r}")
            self.conn.send(("reply", call_id, True, value))
        except Exception as exc:  # noqa: BLE001 - the caller reports it
            self.conn.send(("reply", call_id, False, str(exc)))

    def _process(self, ref: FrameRef, meta: FrameMeta) -> None:
        from vlad_localization.verification.depth_sources import DepthSource

        frame = self.reader.read(ref)
        if frame is None:  # written over since: the newer frame's reference follows
            self.conn.send(("dropped", ref.camera))
            return
        rgb = frame["image"]
        rejections: list[tuple[str, str]] = []
        depth = DepthSource.given(frame.get("depth"))
        if meta.stereo is not None:
            depth = meta.stereo.with_right(frame.get("right")).depth_source(rgb, rejections)
        try:
            result = self.detector.process(meta.stamp_ns, rgb, meta.pose, ref.camera, meta.camera_model, depth)
            extras = {"match_image": _match_image(result, rgb) if meta.match_image else None,
                      "rejections": rejections, **_device_info(self.detector, self.base_config)}
        except Exception as exc:  # noqa: BLE001 - one bad frame must not end the process
            self.conn.send(("failed", ref.camera, f"{type(exc).__name__}: {exc}", rejections))
            return
        self.conn.send(("result", ref.camera, result.detached(), extras))


def serve(spec: InferenceSpec, conn, parent_pid: int | None = None) -> None:
    """The inference process's main (also run on a thread with ``parent_pid`` None): load, say
    ``ready`` (or ``load_failed``), then serve frames and requests until ``stop`` or EOF."""
    if parent_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops this process, not the terminal
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        detector = spec.factory(spec.config, spec.checkpoint, spec.map_path)
    except Exception as exc:  # noqa: BLE001 - reported to the node (configure fails)
        conn.send(("load_failed", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", _device_info(detector, spec.config)))
        _Server(detector, spec.config, conn).run()
    except (EOFError, BrokenPipeError):
        pass
    finally:
        detector.release()


def _process_main(spec: InferenceSpec, conn, parent_pid: int) -> None:
    """:func:`serve`, then exit at once (the interpreter's teardown of torch/faiss takes seconds)."""
    try:
        serve(spec, conn, parent_pid)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@contextlib.contextmanager
def _empty_main():
    """``spawn`` runs the parent's ``__main__`` script again in the child (the node's console script
    imports rclpy): start the child from an empty one (the factory is imported from its module)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


# -- the node's handle ------------------------------------------------------------------------------
@dataclass
class InferenceEvents:
    """Callbacks of the handle's reader thread (the node publishes from them)."""

    on_result: Callable[[int, Any, dict], None]
    on_dropped: Callable[[int], None]
    on_failed: Callable[[int, str, list], None]
    on_exit: Callable[[Any, str], None]  # (the handle, the cause): the process died (it was not stopped)


class InferenceProcess:
    """The node's side: start (and load), submit frames, forward requests, stop."""

    def __init__(self, spec: InferenceSpec, num_cameras: int, events: InferenceEvents, isolate: bool = True):
        self.spec, self.events, self.isolate = spec, events, isolate
        self.slots = FrameSlots(num_cameras)
        self.info: dict[str, Any] = {}
        self._conn, child_conn = multiprocessing.Pipe(duplex=True)
        self._send_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        self._replies: dict[int, list] = {}  # call id -> [Event, ok, value]
        self._ids = itertools.count()
        self._stopping = False  # set by the first stop(), which does the work; a concurrent one waits for it
        self._stop_done = threading.Event()
        self._in_flight = [0] * num_cameras
        if isolate:
            ctx = multiprocessing.get_context("spawn")
            self._worker = ctx.Process(target=_process_main, args=(spec, child_conn, os.getpid()),
                                       name="vlad_inference", daemon=True)
        else:
            self._worker = threading.Thread(target=serve, args=(spec, child_conn), name="vlad_inference", daemon=True)
        self._child_conn = child_conn
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._worker.pid if self.isolate else os.getpid()

    @property
    def exitcode(self) -> int | None:
        return self._worker.exitcode if self.isolate else None

    def alive(self) -> bool:
        return self._worker.is_alive()

    def start(self, cancelled: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Start and wait until the detector is loaded: its info (device, map size, stats); raises
        :class:`InferenceError` when it failed to load, died or ``cancelled()`` became true."""
        if self.isolate:
            with _empty_main():
                self._worker.start()
            self._child_conn.close()  # the process holds its end: EOF here when it dies
        else:
            self._worker.start()
        while True:
            try:
                ready = self._conn.poll(0.05)
            except (EOFError, OSError):
                ready = True
            if ready:
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    stopping = self._stopping
                    self._worker.join(KILL_WAIT_S)
                    self.stop()
                    raise InferenceError("loading cancelled" if stopping else
                                         f"inference process died while loading ({exit_cause(self.exitcode)})")
                if message[0] == "load_failed":
                    self.stop()
                    raise InferenceError(message[1])
                self.info = message[1]
                break
            if cancelled() or self._stopping or not self._worker.is_alive():
                code = self.exitcode
                self.stop()
                raise InferenceError("loading cancelled" if code is None or self._stopping
                                     else f"inference process died while loading ({exit_cause(code)})")
        self._reader = threading.Thread(target=self._read, name="vlad_inference_results", daemon=True)
        self._reader.start()
        return self.info

    def submit(self, camera: int, arrays: dict, meta: FrameMeta) -> bool:
        """Write the frame into the camera's slot and send its reference; False when the process is
        gone (the frame is not processed)."""
        with self._slots_lock:  # not while stop() unlinks the slots
            if self._stopping:
                return False
            ref = self.slots.write(camera, arrays)
        self._in_flight[camera] += 1
        if not self._send(("frame", ref, meta)):
            self._in_flight[camera] -= 1
            return False
        return True

    def apply_overrides(self, overrides: dict) -> bool:
        """Configuration overrides (``config.apply_overrides``) for the frames sent after this."""
        return self._send(("overrides", overrides))

    def call(self, name: str, *args, timeout: float = 120.0):
        """A request answered between frames (``save_map``, ``reload_map``); raises
        :class:`InferenceError` with the process's message."""
        call_id = next(self._ids)
        reply = self._replies[call_id] = [threading.Event(), False, "inference process not running"]
        if self._send(("call", call_id, name, args)):
            if not reply[0].wait(timeout):
                reply[2] = f"no answer from the inference process in {timeout:.0f} s"
        self._replies.pop(call_id, None)
        if not reply[1]:
            raise InferenceError(reply[2])
        return reply[2]

    def in_flight(self) -> list[int]:
        return list(self._in_flight)

    def stop(self, timeout: float = STOP_GRACE_S) -> bool:
        """Stop the process (ask, then SIGTERM, then SIGKILL; a thread is abandoned after
        ``timeout``) and unlink the slots. True when it is gone. Safe from several threads at once
        (a cancelled load stops it while the node's shutdown does): the first call does the work,
        the others wait for it."""
        with self._slots_lock:
            first, self._stopping = not self._stopping, True
        if not first:
            if threading.current_thread() is not self._worker:
                self._stop_done.wait(timeout + 2 * KILL_WAIT_S)
            return not self._worker.is_alive()
        try:
            return self._stop(timeout)
        finally:
            self._stop_done.set()

    def _stop(self, timeout: float) -> bool:
        self._send(("stop",))
        gone = True
        started = self._worker.pid is not None if self.isolate else self._worker.ident is not None
        if started:
            if threading.current_thread() is not self._worker:
                self._worker.join(timeout)
            if self.isolate and self._worker.is_alive():
                self._worker.terminate()
                self._worker.join(KILL_WAIT_S)
                if self._worker.is_alive():
                    self._worker.kill()
                    self._worker.join(KILL_WAIT_S)
            gone = not self._worker.is_alive()
        self._conn.close()
        if not self._worker.is_alive():
            self._child_conn.close()  # (a thread's end; a process's end is closed at start)
        self.slots.close()
        self._wake_callers("the inference process stopped")
        return gone

    def _send(self, message) -> bool:
        with self._send_lock:
            try:
                self._conn.send(message)
                return True
            except (OSError, ValueError):  # closed, or the process is gone
                return False

    def _wake_callers(self, why: str) -> None:
        for reply in list(self._replies.values()):
            reply[2] = why
            reply[0].set()

    def _read(self) -> None:
        """The reader thread: results to the node's callbacks until EOF (the process ended)."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "reply":
                reply = self._replies.get(message[1])
                if reply is not None:
                    reply[1], reply[2] = message[2], message[3]
                    reply[0].set()
                continue
            camera = message[1]
            self._in_flight[camera] = max(0, self._in_flight[camera] - 1)
            if kind == "result":
                self.info.update({k: v for k, v in message[3].items() if k not in ("match_image", "rejections")})
                self.events.on_result(camera, message[2], message[3])
            elif kind == "dropped":
                self.events.on_dropped(camera)
            elif kind == "failed":
                self.events.on_failed(camera, message[2], message[3])
        if self._stopping:
            return
        self._worker.join(KILL_WAIT_S) if self.isolate else None
        self._wake_callers(f"the inference process died ({exit_cause(self.exitcode)})")
        self.events.on_exit(self, exit_cause(self.exitcode) if self.isolate else "its thread ended")


__all__ = ["FrameMeta", "InferenceError", "InferenceEvents", "InferenceProcess", "InferenceSpec", "exit_cause",
           "load_detector", "serve"]
