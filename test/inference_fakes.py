"""rclpy-free helpers the inference-process tests hand to spawned processes (importable by module
name there): a small detector factory, a frame writer for the torn-frame stress test, and a
stand-in for the node's process (``python inference_fakes.py``) for the parent-death test."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from vlad_localization.ros.frame_slots import FrameSlots

SHAPES = ((480, 640, 3), (240, 320, 3), (600, 800, 3))  # the third forces a reallocation


def frame_content(seq: int, shape) -> dict[str, np.ndarray]:
    """A frame whose every byte says which write it came from: the image filled with one value,
    the depth with another, and the write's number in ``tag``."""
    return {"image": np.full(shape, seq % 251, np.uint8),
            "depth": np.full(shape[:2], (seq * 7) % 65521, np.uint16),
            "tag": np.array([seq], np.int64)}


def frame_intact(frame: dict[str, np.ndarray]) -> bool:
    seq = int(frame["tag"][0])
    return bool((frame["image"] == seq % 251).all() and (frame["depth"] == (seq * 7) % 65521).all())


def write_frames(conn, count: int) -> None:
    """Write ``count`` frames into camera 0's slot as fast as possible (sizes changing now and
    then), sending each reference; then the number of reallocations."""
    slots = FrameSlots(1)
    try:
        for seq in range(count):
            shape = SHAPES[(seq // 200) % len(SHAPES)]
            conn.send(slots.write(0, frame_content(seq, shape)))
        conn.send(("done", slots.reallocations))
        conn.recv()  # the reader has finished: the blocks may go
    finally:
        slots.close()


class TinyDetector:
    """Answers every frame with one candidate whose ``map_id`` is the image's mean pixel value;
    ``stats`` says whether rclpy was imported in its process."""

    def __init__(self, config):
        self.config = config
        self.map = None
        self.device = "cpu"
        self.released = False

    def process(self, stamp_ns, rgb, pose=None, camera=0, camera_model=None, depth=None):
        from vlad_localization.detector import FrameResult
        from vlad_localization.pipeline import Candidate

        if rgb.mean() == 13:
            raise ValueError("unlucky frame")
        candidate = Candidate(int(rgb.mean()), stamp_ns, "cam", "", None, 0.5)
        return FrameResult(stamp_ns, camera, [candidate], None, None, {"total_ms": 1.0})

    def stats(self) -> dict[str, int]:
        return {"rclpy_imported": int("rclpy" in sys.modules)}

    def release(self) -> None:
        self.released = True


def tiny_detector(config, checkpoint, map_path):
    """A module-level factory (pickled by reference): ``checkpoint`` ``slow`` sleeps 30 s first
    (a long load), ``fail`` raises."""
    if checkpoint == "fail":
        raise FileNotFoundError("no such checkpoint: fail")
    if checkpoint == "slow":
        time.sleep(30)
    return TinyDetector(config)


def _stand_in_node(ready_file: str) -> None:
    """Start an inference process, write its pid to ``ready_file``, then wait to be killed."""
    from vlad_localization.config import load_config
    from vlad_localization.ros.inference_process import InferenceEvents, InferenceProcess, InferenceSpec

    events = InferenceEvents(lambda *a: None, lambda *a: None, lambda *a: None, lambda *a: None)
    inference = InferenceProcess(InferenceSpec(tiny_detector, load_config("speed"), "", ""), 1, events)
    inference.start()
    Path(ready_file).write_text(str(inference.pid))
    time.sleep(600)


if __name__ == "__main__":  # the factory must come from the module, not __main__
    sys.path.insert(0, str(Path(__file__).parent))
    import inference_fakes

    inference_fakes._stand_in_node(sys.argv[1])
