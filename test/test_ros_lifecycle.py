"""Lifecycle transitions over the real lifecycle_msgs services, and clean shutdown on
SIGINT / SIGTERM (within 2 s, no traceback), with the real node in its own process."""
from __future__ import annotations

import signal
import time

import pytest

from vlad_localization.ros.client import NodeClient, start_node, stop_node, wait_for

S = 10**9
TOPIC = "/lc_cam/image_raw"


def test_lifecycle_transitions_via_services(campus_map, ros_domain_id, tmp_path):
    name = "vlad_lifecycle"
    log = tmp_path / "node.log"
    proc = start_node(campus_map.node_params([TOPIC], autostart=False, map_path=str(tmp_path / "missing")),
                      name=name, log_path=log)
    try:
        with NodeClient(node_name=name, image_topics=(TOPIC,)) as client:
            assert client.lifecycle(timeout=60) == "unconfigured"
            assert not client.lifecycle("configure")  # the map does not exist: stays unconfigured
            assert client.lifecycle() == "unconfigured"
            assert "configure failed" in log.read_text()
            assert client.set_parameters(map_path=str(campus_map.map_dir))
            assert client.lifecycle("configure") and client.lifecycle() == "inactive"
            # what configure created (the output publishers) is discovered here: no image subscription among it
            assert wait_for(lambda: client.node.count_publishers(f"/{name}/candidates"), 10)
            assert all(p.get_subscription_count() == 0 for p in client.publishers)  # not yet subscribed
            assert client.lifecycle("activate") and client.lifecycle() == "active"
            assert client.wait_connected(10)
            client.publish(campus_map.image(9), 9 * S)
            assert client.wait_candidates(9 * S, 30) is not None
            assert client.lifecycle("deactivate") and client.lifecycle() == "inactive"
            assert wait_for(lambda: all(p.get_subscription_count() == 0 for p in client.publishers), 5)
            client.publish(campus_map.image(9), 9 * S + 10**6)  # nobody listens: no answer
            assert client.lifecycle("cleanup") and client.lifecycle() == "unconfigured"
            assert client.lifecycle("configure") and client.lifecycle("activate")
            assert client.wait_connected(10)
            client.publish(campus_map.image(11), 11 * S)
            assert client.wait_candidates(11 * S, 30) is not None
            assert client.candidates_for(9 * S + 10**6) is None
    finally:
        took = stop_node(proc, signal.SIGTERM)
    assert took < 2.0, f"SIGTERM took {took:.2f} s"
    text = log.read_text()
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in text, f"exit code {proc.returncode}:\n{text[-3000:]}"


@pytest.mark.parametrize("sig", [signal.SIGINT])  # SIGTERM: end of the lifecycle test
def test_clean_shutdown_while_busy(campus_map, ros_domain_id, tmp_path, sig):
    name = "vlad_shutdown"
    log = tmp_path / "node.log"
    proc = start_node(campus_map.node_params([TOPIC]), name=name, log_path=log)
    try:
        with NodeClient(node_name=name, image_topics=(TOPIC,)) as client:
            assert client.wait_connected(90), log.read_text()[-3000:]
            for i in range(20):  # keep the worker busy
                client.publish(campus_map.image(i), i * S)
                time.sleep(0.03)
    finally:
        took = stop_node(proc, sig)
    text = log.read_text()
    assert took < 2.0, f"{sig.name} took {took:.2f} s"
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{text[-2000:]}"
    assert "Traceback" not in text and "Error" not in text, text[-2000:]
