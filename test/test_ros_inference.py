"""The node's inference process (:mod:`vlad_localization.ros.inference_process`) and its
shared-memory frame slots (:mod:`vlad_localization.ros.frame_slots`), without ROS: frames are
never torn, results come back whole, a death is reported with its cause, the process ends with its
parent; the child never imports rclpy."""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import inference_fakes
from vlad_localization.config import load_config
from vlad_localization.ros.frame_slots import FrameSlots, SlotReader, attach
from vlad_localization.ros.inference_process import (FrameMeta, InferenceError, InferenceEvents, InferenceProcess,
                                                     InferenceSpec, exit_cause)

WRITES = 6000


def test_a_frame_written_while_it_is_read_is_never_torn():
    """A spawned writer rewrites one slot as fast as it can (three sizes: reallocations) while this
    process reads the newest reference it has: every frame read is whole (each byte from the same
    write), and the reads that raced a write were caught (superseded), not returned."""
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    writer = ctx.Process(target=inference_fakes.write_frames, args=(child_conn, WRITES), daemon=True)
    writer.start()
    reader, intact, superseded, reallocations = SlotReader(), 0, 0, None
    try:
        while reallocations is None:
            ref = conn.recv()
            while conn.poll():  # the newest reference only, as the inference process does
                if isinstance(ref, tuple):
                    break
                ref = conn.recv()
            if isinstance(ref, tuple):
                reallocations = ref[1]
                break
            frame = reader.read(ref)
            if frame is None:
                superseded += 1
                continue
            assert inference_fakes.frame_intact(frame), f"torn frame at write {ref.seq}"
            assert frame["image"].shape == inference_fakes.SHAPES[(int(frame["tag"][0]) // 200) % 3]
            intact += 1
        conn.send("finished")
    finally:
        reader.close()
        writer.join(10)
    print(f"{intact} read whole, {superseded} superseded")
    assert intact >= 20 and superseded > 0, (intact, superseded)  # measured: 500-1850 whole of 6000
    assert reallocations >= 1  # 800x600 did not fit the 640x480 block


def test_a_store_the_sequence_number_misses_is_caught_by_the_checksum():
    """What a core with weak memory ordering (aarch64) may see: part of a newer frame in the block
    while the sequence number still reads as the old frame's. The reference's checksum drops the
    copy; the bytes put back, the same reference reads whole again."""
    slots, reader = FrameSlots(1), SlotReader()
    block = None
    try:
        ref = slots.write(0, inference_fakes.frame_content(5, (48, 64, 3)))
        block = attach(ref.name)
        key, dtype, shape, offset = next(entry for entry in ref.layout if entry[0] == "depth")
        depth = np.ndarray(shape, dtype, block.buf, offset)
        depth[:3] = 12345  # a newer frame's first rows, the sequence number untouched
        assert reader.read(ref) is None and reader.checksum_drops == 1
        depth[:3] = (5 * 7) % 65521
        frame = reader.read(ref)
        assert frame is not None and inference_fakes.frame_intact(frame) and reader.checksum_drops == 1
        del depth
    finally:
        reader.close()
        if block is not None:
            block.close()
        slots.close()


def test_a_reader_attaching_after_a_reallocation_drops_the_frame():
    slots, reader = FrameSlots(2), SlotReader()
    try:
        small = slots.write(1, {"image": np.ones((4, 4, 3), np.uint8)})
        assert reader.read(small)["image"].sum() == 48
        old = slots.write(1, {"image": np.full((4, 4, 3), 2, np.uint8)})
        big = slots.write(1, {"image": np.full((40, 40, 3), 3, np.uint8)})  # a new, larger block
        assert big.name != old.name and slots.reallocations == 1
        assert reader.read(old) is None  # superseded (its block is unlinked)
        assert reader.read(big)["image"].shape == (40, 40, 3)
    finally:
        reader.close()
        slots.close()


class Events:
    def __init__(self):
        self.results, self.dropped, self.failed, self.exits = queue.Queue(), [], queue.Queue(), queue.Queue()

    def events(self) -> InferenceEvents:
        return InferenceEvents(lambda c, r, e: self.results.put((c, r, e)), self.dropped.append,
                               lambda c, text, rej: self.failed.put(text), lambda h, cause: self.exits.put(cause))


def start(checkpoint="", cameras=2):
    events = Events()
    spec = InferenceSpec(inference_fakes.tiny_detector, load_config("speed"), checkpoint, "")
    inference = InferenceProcess(spec, cameras, events.events())
    return inference, events


@pytest.mark.parametrize("isolate", [True, False])
def test_stops_from_several_threads_at_once_all_return_and_none_raises(isolate):
    """A cancelled load stops the process on the loading thread while the node's shutdown stops it on
    another (SIGINT during configure): every stop() returns True once it is gone, none raises (a
    double close of the pipe raised EBADF and the node exited with a traceback)."""
    import concurrent.futures

    for _ in range(3):
        events = Events()
        spec = InferenceSpec(inference_fakes.tiny_detector, load_config("speed"), "", "")
        inference = InferenceProcess(spec, 1, events.events(), isolate=isolate)
        inference.start()
        barrier = threading.Barrier(4)

        def stop():
            barrier.wait()
            return inference.stop()

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert [f.result(timeout=30) for f in [pool.submit(stop) for _ in range(4)]] == [True] * 4
        assert not inference.alive() and events.exits.empty()


def test_frames_go_through_the_process_and_results_come_back_whole():
    inference, events = start()
    try:
        info = inference.start()
        assert info["pid"] == inference.pid != os.getpid() and info["device"] == "cpu"
        assert info["stats"] == {"rclpy_imported": 0}  # the child imports the core library only
        for camera, value in ((0, 7), (1, 9)):
            assert inference.submit(camera, {"image": np.full((30, 40, 3), value, np.uint8)}, FrameMeta(100 + camera))
        got = sorted(events.results.get(timeout=30)[:2] for _ in range(2))
        assert [(c, r.stamp_ns, r.candidates[0].map_id) for c, r in got] == [(0, 100, 7), (1, 101, 9)]
        assert inference.submit(0, {"image": np.full((30, 40, 3), 13, np.uint8)}, FrameMeta(102))
        assert "ValueError: unlucky frame" in events.failed.get(timeout=30)  # one bad frame: reported
        assert inference.submit(0, {"image": np.full((30, 40, 3), 5, np.uint8)}, FrameMeta(103))
        assert events.results.get(timeout=30)[1].candidates[0].map_id == 5  # and the process goes on
        with pytest.raises(InferenceError, match="nothing to save|save_map"):
            inference.call("save_map", "/tmp/x", [], timeout=30)  # the fake has no save_map: the error comes back
    finally:
        assert inference.stop()
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE


def test_a_killed_process_is_reported_with_its_cause():
    inference, events = start()
    try:
        pid = inference.start()["pid"]
        os.kill(pid, signal.SIGKILL)
        cause = events.exits.get(timeout=10)
        assert cause.startswith("killed by SIGKILL") and "out of memory" in cause
        assert not inference.submit(0, {"image": np.zeros((4, 4, 3), np.uint8)}, FrameMeta(1))
    finally:
        inference.stop()
    assert exit_cause(-signal.SIGSEGV).startswith("killed by SIGSEGV") and exit_cause(3) == "exit code 3"


def test_a_failed_load_and_a_cancelled_load_raise():
    inference, _ = start("fail")
    with pytest.raises(InferenceError, match="FileNotFoundError: no such checkpoint"):
        inference.start()
    inference, _ = start("slow")
    t0 = time.monotonic()
    with pytest.raises(InferenceError, match="cancelled"):
        inference.start(cancelled=lambda: time.monotonic() - t0 > 1.0)
    assert time.monotonic() - t0 < 5 and not inference.alive()


def test_the_process_ends_when_its_parent_is_killed(tmp_path):
    ready = tmp_path / "pid"
    parent = subprocess.Popen([sys.executable, str(Path(inference_fakes.__file__)), str(ready)],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        t0 = time.monotonic()
        while not ready.exists() or not ready.read_text():
            assert parent.poll() is None and time.monotonic() - t0 < 120, "the stand-in node did not start"
            time.sleep(0.1)
        child = psutil.Process(int(ready.read_text()))
        parent.kill()  # SIGKILL: no cleanup of its own
        parent.wait()
        gone, _ = psutil.wait_procs([child], timeout=3)
        assert gone, "the inference process outlived its parent"
    finally:
        parent.kill()
