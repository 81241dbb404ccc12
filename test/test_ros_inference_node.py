"""The real node (real DDS, real model and map) and its inference process: killed mid-run it is
reported at ERROR on /diagnostics with the cause, restarted, and answers again; killed every time
it comes back (a crash loop) the node ends in ERROR and still answers; SIGINT while the model loads
and while frames are processed ends everything in under 2 s with no process left behind."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from ros_helpers import answered, status_of, status_values
from vlad_localization.ros.client import NodeClient, start_node, stop_node, wait_for
from vlad_localization.ros.node import MAX_RESTARTS

S = 10**9
TOPIC = "/inf_cam/image_raw"
ERROR = b"\x02"


def inference_children(proc) -> list[psutil.Process]:
    """The node's spawned inference process(es) (not multiprocessing's resource tracker)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmdline:
            out.append(child)
    return out


def stop_and_check_nothing_left(proc, log) -> float:
    """SIGINT the node; the seconds it took. Every process it had started is gone soon after."""
    descendants = psutil.Process(proc.pid).children(recursive=True)
    took = stop_node(proc, signal.SIGINT)
    _, alive = psutil.wait_procs(descendants, timeout=2.0)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}\n{log.read_text()[-2000:]}"
    assert proc.returncode == 0 and "Traceback" not in log.read_text(), log.read_text()[-3000:]
    return took


def next_inference_pid(client, name, not_in, timeout=90.0) -> int:
    status = status_of(client, name, lambda s: status_values(s).get("inference_pid", "") not in ("", *map(str, not_in)),
                       timeout)
    assert status is not None, "the inference process did not come back"
    return int(status_values(status)["inference_pid"])


def test_a_killed_inference_process_is_restarted_and_a_crash_loop_ends_in_error(campus_map, ros_domain_id,
                                                                                tmp_path):
    name, log = "vlad_restart", tmp_path / "node.log"
    proc = start_node(campus_map.node_params([TOPIC]), name=name, log_path=log)
    try:
        with NodeClient(node_name=name, image_topics=(TOPIC,)) as client:
            assert client.wait_connected(90), log.read_text()[-3000:]
            assert answered(client, campus_map.image(5), 5 * S)
            pid = next_inference_pid(client, name, ())
            assert pid in [p.pid for p in inference_children(proc)]
            maps = Path(f"/proc/{pid}/maps")
            if maps.exists():  # Linux: the inference process never loaded rclpy's libraries (nor the node's script)
                assert "rclpy" not in maps.read_text()

            os.kill(pid, signal.SIGKILL)  # what the OOM killer does
            died = status_of(client, name, lambda s: "SIGKILL" in s.message)
            assert died is not None, log.read_text()[-3000:]
            assert died.level == ERROR and "restarting" in died.message and status_values(died)["state"] == "active"
            back = status_of(client, name, lambda s: s.message == "ok" and status_values(s)["inference_restarts"] == "1",
                             90)
            assert back is not None, log.read_text()[-3000:]
            assert int(status_values(back)["inference_pid"]) != pid
            assert answered(client, campus_map.image(30), 30 * S)  # the same map, answering again
            assert status_values(status_of(client, name, lambda s: s.message == "ok"))["map_size"] == "72"

            killed = [pid]
            for attempt in range(MAX_RESTARTS + 1):  # killed each time it is back: a crash loop
                pid = next_inference_pid(client, name, killed)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            gave_up = status_of(client, name, lambda s: "gave up" in s.message, 60)
            assert gave_up is not None, log.read_text()[-3000:]
            assert gave_up.level == ERROR and "SIGKILL" in gave_up.message
            # no further restart: the node's next reports still say ERROR, no inference process, no new restart
            reported = len(client.get("diagnostics"))
            assert wait_for(lambda: len(client.get("diagnostics")) >= reported + 2, 10)
            restarts = status_values(gave_up)["inference_restarts"]
            later = [(s.message, status_values(s)) for r in client.get("diagnostics")[reported:] for s in r.msg.status]
            assert later and all("gave up" in message and (v["inference_pid"], v["inference_restarts"]) == ("", restarts)
                                 for message, v in later), later
            assert not inference_children(proc)
            assert client.lifecycle() == "active"  # the node itself answers
    finally:
        took = stop_and_check_nothing_left(proc, log)
    assert took < 2.0, f"SIGINT took {took:.2f} s"


@pytest.mark.parametrize("when", ["loading", "processing"])
def test_sigint_ends_the_node_and_its_inference_process(campus_map, ros_domain_id, tmp_path, when):
    name, log = f"vlad_sigint_{when}", tmp_path / "node.log"
    proc = start_node(campus_map.node_params([TOPIC]), name=name, log_path=log)
    try:
        if when == "loading":  # as soon as the inference process exists: it is importing torch, loading
            assert wait_for(lambda: inference_children(proc), 60, period=0.05), log.read_text()[-3000:]
            assert "loaded mode" not in log.read_text()
        else:
            with NodeClient(node_name=name, image_topics=(TOPIC,)) as client:
                assert client.wait_connected(90), log.read_text()[-3000:]
                assert answered(client, campus_map.image(3), 3 * S)
                stop = threading.Event()

                def publish():
                    i = 10
                    while not stop.is_set():
                        client.publish(campus_map.image(i % 72), i * S)
                        i += 1
                        time.sleep(1 / 30)
                publisher = threading.Thread(target=publish, daemon=True)
                publisher.start()
                answers = len(client.get("candidates"))  # frames in flight between the node and its inference process:
                assert wait_for(lambda: len(client.get("candidates")) >= answers + 2, 30)  # the stream is answered
                try:
                    took = stop_and_check_nothing_left(proc, log)
                finally:
                    stop.set()
                    publisher.join(2)
                assert took < 2.0, f"SIGINT took {took:.2f} s"
                return
    finally:
        if proc.poll() is None:
            took = stop_and_check_nothing_left(proc, log)
            assert took < 2.0, f"SIGINT took {took:.2f} s"
