"""The real node over real DDS with damaged and swapped maps: it refuses to activate on a map that
fails its checks and /diagnostics says why; ~/reload_map to a damaged map keeps the old one; two
nodes reading one map keep answering while a writer swaps a new version in and both reload it."""
from __future__ import annotations

import shutil
import signal

import numpy as np
from std_srvs.srv import Trigger

from ros_helpers import answered, status_of, status_values
from vlad_localization.mapdb import MapDatabase, MapWriter
from vlad_localization.ros.messages import parse_candidates
from vlad_localization.ros.client import NodeClient, start_node, stop_node, wait_for

S = 10**9
TOPIC = "/rel_cam/image_raw"


def flip_bit(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def clean_exit(proc, log) -> None:
    took = stop_node(proc, signal.SIGINT)
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, f"exit {proc.returncode} after {took:.1f} s:\n{text[-3000:]}"


def test_damaged_maps_are_refused_at_configure_and_on_reload(campus_map, ros_domain_id, tmp_path):
    good, damaged, truncated = (tmp_path / n for n in ("good", "damaged", "truncated"))
    for path in (good, damaged, truncated):
        shutil.copytree(campus_map.map_dir, path)
    flip_bit(damaged / "patches_p5.f16", 12345)  # same size: only the sha256 finds it
    with open(truncated / "global.f32", "r+b") as f:
        f.truncate(1000)  # the cheap check on open finds it
    name, log = "vlad_integrity", tmp_path / "node.log"
    proc = start_node(campus_map.node_params([TOPIC], map_path=damaged, verify_map=True), name=name, log_path=log)
    try:
        with NodeClient(node_name=name, image_topics=(TOPIC,)) as client:
            refused = status_of(client, name, lambda s: "patches_p5.f16" in s.message, 90)
            assert refused, f"diagnostics never named the damaged file:\n{log.read_text()[-3000:]}"
            assert refused.level == b"\x02" and "sha256" in refused.message  # ERROR
            assert status_values(refused)["state"] == "unconfigured" and status_values(refused)["map_size"] == "0"
            assert client.lifecycle() == "unconfigured"
            assert all(p.get_subscription_count() == 0 for p in client.publishers)

            assert client.set_parameters(map_path=str(good))
            assert client.lifecycle("configure") and client.lifecycle("activate")
            assert client.wait_connected(10) and answered(client, campus_map.image(5), 5 * S)
            assert status_of(client, name, lambda s: s.message == "ok" and status_values(s)["state"] == "active")

            for bad, verify, file in ((damaged, True, "patches_p5.f16"), (truncated, False, "global.f32")):
                assert client.set_parameters(map_path=str(bad), verify_map=verify)
                result = client.call(Trigger, "reload_map", timeout=30)
                assert not result.success and file in result.message and "previous map stays loaded" in result.message
                warned = status_of(client, name, lambda s: file in s.message and status_values(s)["state"] == "active")
                assert warned.level == b"\x01" and status_values(warned)["map_size"] == "72"  # WARN, old map in use
                assert answered(client, campus_map.image(30), 30 * S + len(file))  # still answering

            assert client.set_parameters(map_path=str(good))
            assert client.call(Trigger, "reload_map", timeout=30).success
            assert status_of(client, name, lambda s: s.message == "ok")  # the error is cleared
    finally:
        clean_exit(proc, log)


def append_copies(map_dir, ids) -> None:
    """Append keyframes ``ids`` again (stamps + 1000 s) through MapWriter: copy-on-write, then
    an atomic swap of the whole map (what build-map --append does, without encoding)."""
    with MapDatabase.open(map_dir) as db:
        g = np.asarray(db.global_desc[ids])
        patches, keyframes = db.patches(ids), db.keyframes(ids)
        grid, image_size = db.manifest.grid, db.manifest.image_size
    for k in keyframes:
        k.stamp_ns += 1000 * S
    with MapWriter(map_dir, identity=None, append=True) as writer:
        writer.add(g, patches, keyframes, grid=grid, image_size=image_size)
        writer.commit(["copies"])


def test_two_nodes_keep_answering_while_the_map_is_swapped_and_reloaded(campus_map, ros_domain_id, tmp_path):
    shared = tmp_path / "shared_map"
    shutil.copytree(campus_map.map_dir, shared)
    names = ("vlad_reader_a", "vlad_reader_b")
    topics = ("/reader_a/image_raw", "/reader_b/image_raw")
    logs = [tmp_path / f"{n}.log" for n in names]
    procs = [start_node(campus_map.node_params([t], map_path=shared), name=n, log_path=log)
             for n, t, log in zip(names, topics, logs)]
    try:
        with NodeClient(node_name=names[0], image_topics=(topics[0],)) as a, \
                NodeClient(node_name=names[1], image_topics=(topics[1],)) as b:
            assert a.wait_connected(90) and b.wait_connected(90), logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
            stamp = [100 * S]

            def query_both(i: int) -> None:
                stamp[0] += S // 1000
                for client in (a, b):
                    client.publish(campus_map.image(i), stamp[0])

            for i in range(0, 6):  # both nodes busy while the writer copies and swaps
                query_both(i)
                if i == 2:
                    append_copies(shared, [3, 4, 5])
            assert wait_for(lambda: a.candidates_for(stamp[0]) and b.candidates_for(stamp[0]), 30)
            for client in (a, b):
                result = client.call(Trigger, "reload_map", timeout=30)
                assert result.success and "75 keyframes" in result.message, result.message
            query_both(4)  # keyframe 4 and its copy (72 + 1) are now both in the map
            for client in (a, b):
                rec = client.wait_candidates(stamp[0], 30)
                assert rec is not None
                top2 = sorted(round(row["map_stamp"]) for row in parse_candidates(rec.msg)[:2])
                assert top2 == [4, 1004], top2  # map stamps: the original and the copy
    finally:
        for proc, log in zip(procs, logs):
            clean_exit(proc, log)
