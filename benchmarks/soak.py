"""Soak test of the running ROS 2 node (real DDS, node in its own process): thousands of frames
at the camera's rate, 5 % of them malformed, with the node's memory, threads and file descriptors
watched. Prints JSON.

A raw rgb8 camera at ``--rate`` Hz (campus_loop_72 images scaled to 213x120) and a JPEG camera
at a tenth of that rate; every 20th frame of each is malformed (short data, small step, unknown
encoding, empty, oversized header, random header / truncated, random, flipped or crafted JPEG). The
node (speed preset at 120x160, a 24-keyframe map, reliable QoS so every frame reaches it) drops
frames it cannot process in time (newest frame per camera) and rejects the malformed ones; the
report has the node's own counts (processed, dropped, rejected by reason), its RSS after the
warm-up and at the end, its thread and file-descriptor counts and any exception in its log.

    python benchmarks/soak.py [--frames 5000] [--rate 30] [--warmup-s 20] [--device cpu] [--out soak.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node import CAMPUS, prepare, shared_data_and_domain  # noqa: E402  (benchmarks/node.py: checkpoint + map)

NAME = "vlad_soak"
TOPICS = ("/soak/image_raw", "/soak/image_raw/compressed")
NETWORK_HW = (120, 160)
IMAGE_WH = (213, 120)
MALFORMED_EVERY = 20  # 5 %
COMPRESSED_EVERY = 10  # the JPEG camera runs at a tenth of the raw camera's rate


def malformed_raw(rng: np.random.Generator, good):
    """A bad sensor_msgs/Image (one of six kinds, in turn), from a good one."""
    from sensor_msgs.msg import Image

    kind = int(rng.integers(6))
    fields = dict(height=good.height, width=good.width, encoding=good.encoding, step=good.step, data=bytes(good.data))
    if kind == 0:
        fields["data"] = fields["data"][: len(fields["data"]) // 2]
    elif kind == 1:
        fields["step"] = good.width
    elif kind == 2:
        fields["encoding"] = "yuv422_weird"
    elif kind == 3:
        fields.update(height=0, width=0, step=0, data=b"")
    elif kind == 4:
        fields.update(height=60000, width=60000, step=180000, data=b"\0" * 64)
    else:
        fields.update(height=int(rng.integers(0, 300)), width=int(rng.integers(0, 300)), step=int(rng.integers(0, 900)),
                      encoding=str(rng.choice(["rgb8", "mono16", "bgra8", "bayer_rggb8", "16UC3", ""])),
                      data=rng.integers(0, 256, int(rng.integers(0, 20000)), np.uint8).tobytes())
    return Image(**fields)


def malformed_jpeg(rng: np.random.Generator, jpeg: bytes):
    """A bad sensor_msgs/CompressedImage: truncated, random, bit-flipped or a hidden-frame-header JPEG."""
    from sensor_msgs.msg import CompressedImage

    kind = int(rng.integers(4))
    if kind == 0:
        data = jpeg[: int(rng.integers(2, len(jpeg)))]
    elif kind == 1:
        data = rng.integers(0, 256, int(rng.integers(1, 4000)), np.uint8).tobytes()
    elif kind == 2:
        buf = bytearray(jpeg)
        for pos in rng.integers(0, len(buf), 8):
            buf[pos] ^= 1 << int(rng.integers(8))
        data = bytes(buf)
    else:  # FF 00 read as a segment length hides a 60000x60000 frame header from a size check
        sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60000, 60000) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        data = b"\xff\xd8\xff\x00" + struct.pack(">H", 2 + len(sof)) + sof + jpeg[2:]
    return CompressedImage(format="jpeg", data=data)


def sample_process(pid: int, stop: threading.Event, out: list, period: float = 1.0) -> None:
    """(seconds, RSS MB, threads, open file descriptors) of the node every ``period`` s."""
    proc = psutil.Process(pid)
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            with proc.oneshot():
                out.append((time.monotonic() - t0, proc.memory_info().rss / 2**20, proc.num_threads(), proc.num_fds()))
        except psutil.Error:
            return
        stop.wait(period)


def soak(work: Path, frames: int, rate_hz: float, warmup_s: float, device: str) -> dict:
    import cv2
    from sensor_msgs.msg import CompressedImage

    from vlad_localization.images.io import list_images, load_rgb
    from vlad_localization.ros.client import NodeClient, image_message, start_node, stop_node
    from vlad_localization.ros.diagnostics import parse_diagnostics

    t0 = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        config, checkpoint, map_dir = prepare("speed", work, NETWORK_HW)
    prepare_s = time.monotonic() - t0
    images = [cv2.resize(load_rgb(p), IMAGE_WH, interpolation=cv2.INTER_AREA) for p in list_images(CAMPUS)]
    raw = [image_message(rgb) for rgb in images]
    jpegs = [image_message(rgb, compressed=True) for rgb in images]
    rng = np.random.default_rng(0)
    log = work / "node.log"
    proc = start_node({"map_path": map_dir, "checkpoint": checkpoint, "preset": config, "device": device,
                       "image_topics": list(TOPICS), "qos_reliability": "reliable", "publish_match_image": False},
                      name=NAME, log_path=log)
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_process, args=(proc.pid, stop, samples), daemon=True)
    sent = {"raw": 0, "compressed": 0, "malformed_raw": 0, "malformed_compressed": 0}
    try:
        with NodeClient(node_name=NAME, image_topics=TOPICS) as client:
            if not client.wait_connected(180):
                raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")
            client.publish(images[0], 1)  # the first query loads lazily-initialised state
            client.wait_candidates(1, 60)
            sampler.start()
            period, t_start = 1.0 / rate_hz, time.monotonic()
            warmup_sample = None
            for i in range(frames):
                stamp = 10**12 + i * 10**6  # distinct stamps, 1 ms apart
                bad = i % MALFORMED_EVERY == MALFORMED_EVERY - 1
                msg = malformed_raw(rng, raw[i % len(raw)]) if bad else raw[i % len(raw)]
                client.publish(None, stamp, 0, msg=msg)
                sent["malformed_raw" if bad else "raw"] += 1
                if i % COMPRESSED_EVERY == 0:
                    j = i // COMPRESSED_EVERY
                    bad = j % MALFORMED_EVERY == MALFORMED_EVERY - 1
                    jpeg = jpegs[j % len(jpegs)]
                    cmsg = malformed_jpeg(rng, bytes(jpeg.data)) if bad else CompressedImage(format=jpeg.format, data=jpeg.data)
                    client.publish(None, stamp, 1, msg=cmsg)
                    sent["malformed_compressed" if bad else "compressed"] += 1
                if warmup_sample is None and time.monotonic() - t_start >= warmup_s and samples:
                    warmup_sample = samples[-1]
                time.sleep(max(0.0, t_start + (i + 1) * period - time.monotonic()))
            input_s = time.monotonic() - t_start
            time.sleep(5.0)  # the last frame finishes, diagnostics (1 Hz) catch up
            end_sample = samples[-1]  # (later samples: the node shutting down)
            answered = len(client.get("candidates")) - 1  # minus the warm-up frame
            diag = [d for d in (parse_diagnostics(r.msg, f"{NAME}: loop closure") for r in client.get("diagnostics")) if d]
    finally:
        took = stop_node(proc)
        stop.set()
        if sampler.is_alive():
            sampler.join(2)
    last = diag[-1] if diag else {}
    text = log.read_text()
    counts = {k: int(v) for k, v in last.items() if k in ("processed", "dropped", "rejected")
              or k.startswith(("received[", "rejected["))}
    received = sum(v for k, v in counts.items() if k.startswith("received["))
    during = [s for s in samples if warmup_sample and warmup_sample[0] <= s[0] <= end_sample[0]]
    rss_growth = end_sample[1] - warmup_sample[1] if warmup_sample else None
    exceptions = re.findall(r"^.*(?:Traceback|Exception|query failed|\[ERROR\]).*$", text, re.M)
    report = {
        "frames_sent": sent,
        "input_s": round(input_s, 1),
        "input_rate_hz": round(frames / input_s, 2),
        "node_counts": counts,
        "answered": answered,
        "lost_in_dds": sum(sent.values()) - received,  # depth-1 reader history: a sample the executor was too late for
        "accounting_ok": received == counts.get("processed", 0) + counts.get("dropped", 0) + counts.get("rejected", 0),
        "rss_mb": {"at_start": round(samples[0][1], 1), "after_warmup": round(warmup_sample[1], 1) if warmup_sample else None,
                   "end": round(end_sample[1], 1), "max": round(max(s[1] for s in during), 1) if during else None,
                   "growth_after_warmup": round(rss_growth, 1) if rss_growth is not None else None,
                   "at_quarters_after_warmup": [round(during[min(len(during) - 1, q * len(during) // 4)][1], 1)
                                                for q in range(1, 5)] if during else None},
        "threads": {"after_warmup": warmup_sample[2] if warmup_sample else None, "end": end_sample[2],
                    "min": min(s[2] for s in during) if during else None, "max": max(s[2] for s in during) if during else None},
        "fds": {"after_warmup": warmup_sample[3] if warmup_sample else None, "end": end_sample[3],
                "min": min(s[3] for s in during) if during else None, "max": max(s[3] for s in during) if during else None},
        "log_exceptions": exceptions[:5],
        "shutdown_s": round(took, 2),
        "prepare_s": round(prepare_s, 1),
    }
    report["checks"] = {
        "rss_growth_under_50mb": rss_growth is not None and rss_growth < 50,
        "threads_flat": bool(during) and max(s[2] for s in during) - min(s[2] for s in during) <= 2,
        "fds_flat": bool(during) and max(s[3] for s in during) - min(s[3] for s in during) <= 4,
        "no_exception_in_log": not exceptions and counts.get("rejected[inference_error]", 0) == 0,
        "every_frame_accounted": report["accounting_ok"],
    }
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5000, help="raw camera frames (the JPEG camera sends a tenth)")
    parser.add_argument("--rate", type=float, default=30.0, help="raw camera rate (Hz)")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="RSS growth is measured from this time on")
    parser.add_argument("--device", default="cpu", help="the node's device parameter")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not shared_data_and_domain():
        return 2
    with tempfile.TemporaryDirectory(prefix="vlad_soak_") as tmp:
        result = soak(Path(tmp), args.frames, args.rate, args.warmup_s, args.device)
    report = {"benchmark": "soak", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "input": f"{args.rate} Hz rgb8 {IMAGE_WH[0]}x{IMAGE_WH[1]} + {args.rate / COMPRESSED_EVERY} Hz JPEG, "
                       f"1 in {MALFORMED_EVERY} malformed, reliable QoS; node: speed preset at "
                       f"{NETWORK_HW[0]}x{NETWORK_HW[1]}, 24-keyframe map, {args.device}",
              **result}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
