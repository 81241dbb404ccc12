"""Official checkpoints by name: the shipped table, downloads from a local HTTP server (full,
interrupted and resumed, corrupted, no Range support, offline), and ``--checkpoint NAME`` reading
the cache. No internet: the server runs on 127.0.0.1 in a thread; the cache is a tmp directory."""
from __future__ import annotations

import hashlib
import io
import http.server
import json
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlad_localization.cli.main import main
from vlad_localization.config import load_config
from vlad_localization.model.backbones import build_backbone
from vlad_localization.model.checkpoint import CheckpointError, save_checkpoint
from vlad_localization.model.download import DownloadError, fetch
from vlad_localization.model.encoder import Encoder
from vlad_localization.model.known_checkpoints import cache_dir, find, load_table, presets_fitting
from vlad_localization.model.netvlad import PatchNetVLADPooling

NAME = "pittsburgh_WPCA128"  # an official name, served by the test's server with the test's file
FILE = "pitts_WPCA128.pth.tar"  # its file name on the model hub (and so on a mirror)


# ----------------------------------------------------------------------------- the local server
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/moved/"):  # as the model hub redirects to its file store
            self.send_response(302)
            self.send_header("Location", self.path[len("/moved"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        if srv.corrupt:
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and srv.ranges else 0
        if start >= len(data) > 0 and match:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.drops:  # send half, then close the connection
            srv.drops -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.corrupt, srv.ranges, srv.drops = {}, [], False, True, 0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------- a generated checkpoint
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> bytes:
    """An official-layout checkpoint (ResNet-18 layer3, 4 clusters, 8 PCs; random weights), as bytes."""
    torch.manual_seed(0)
    net = build_backbone("resnet18")
    pool = PatchNetVLADPooling(4, net.out_channels)
    conv = torch.nn.Conv2d(4 * net.out_channels, 8, 1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth.tar"
    save_checkpoint(path, net, pool, {"WPCA.0.weight": conv.weight.data, "WPCA.0.bias": conv.bias.data})
    return path.read_bytes()


@pytest.fixture
def env(tmp_path, monkeypatch, server, tiny_checkpoint):
    """Cache in tmp; an extra table describing the served file under the official name."""
    def table(**fields):
        entry = {"file": FILE, "size": len(tiny_checkpoint), "sha256": hashlib.sha256(tiny_checkpoint).hexdigest(),
                 "backbone": "resnet18", "num_clusters": 4, "num_pcs": 8, **fields}
        path = tmp_path / "table.yaml"
        path.write_text(json.dumps({"base_url": "http://unused.invalid", "checkpoints": {NAME: entry}}))
        monkeypatch.setenv("VLAD_LOCALIZATION_CHECKPOINTS", str(path))

    monkeypatch.setenv("VLAD_LOCALIZATION_CACHE", str(tmp_path / "cache"))
    table()
    server.files[FILE] = tiny_checkpoint
    return type("Env", (), {"table": staticmethod(table), "cache": tmp_path / "cache", "tmp": tmp_path,
                            "data": tiny_checkpoint, "cached": tmp_path / "cache" / f"{NAME}.pth.tar"})


def _download(server, *extra) -> int:
    return main(["download-weights", "--mirror", server.url, *extra, NAME])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the shipped table
def test_shipped_table_names_sizes_digests_and_presets(monkeypatch):
    monkeypatch.delenv("VLAD_LOCALIZATION_CHECKPOINTS", raising=False)
    table = load_table()
    assert set(table) == {f"{d}_WPCA{p}" for d in ("pittsburgh", "mapillary") for p in (128, 512, 4096)} | {
        "landmarks_WPCA4096"}
    for entry in table.values():
        assert entry.url.startswith("https://huggingface.co/TobiasRobotics/Patch-NetVLAD/resolve/main/")
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.backbone == "vgg16"
        pcs = entry.num_pcs
        assert presets_fitting(entry.shape()) == [{128: "storage", 512: "speed", 4096: "performance"}[pcs]]
    assert table["pittsburgh_WPCA512"].file == "pitts_WPCA512.pth.tar" and table["pittsburgh_WPCA512"].size is None
    assert table["mapillary_WPCA512"].size == 92488008 and table["mapillary_WPCA512"].num_clusters == 16
    assert find("pittsburgh_WPCA4096.pth.tar").name == "pittsburgh_WPCA4096"
    assert find("models/pittsburgh_WPCA4096") is None and find("unknown_model") is None


def test_presets_fitting_a_map_model():
    speed = vars(load_config("speed").model)
    identity = {k: speed[k] for k in ("backbone", "num_clusters", "num_pcs", "patch_sizes", "strides",
                                      "image_height", "image_width")}
    assert presets_fitting(identity) == ["speed"]
    assert presets_fitting({**identity, "image_height": 240}) == []  # a config of its own
    assert presets_fitting({**identity, "num_clusters": 16}) == ["speed"]  # clusters come from the checkpoint


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("VLAD_LOCALIZATION_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("VLAD_LOCALIZATION_CACHE")
    assert cache_dir() == tmp_path / "x" / "vlad_localization"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vlad_localization"


def test_malformed_extra_table_is_named(env, capsys):
    env.table(sha256="abc")
    assert main(["download-weights", "--list"]) == 2
    err = capsys.readouterr().err
    assert "table.yaml" in err and NAME in err and "sha256" in err


# ----------------------------------------------------------------------------- downloads
def test_full_download_then_already_cached(env, server, capsys):
    assert _download(server) == 0
    assert env.cached.read_bytes() == env.data
    assert not list(env.cache.glob("*.part"))
    assert server.requests == [(f"/{FILE}", None)]
    assert "downloaded, verified" in capsys.readouterr().out
    assert _download(server) == 0  # verified in place, not fetched again
    assert len(server.requests) == 1 and "already cached" in capsys.readouterr().out


def test_interrupted_download_resumes_with_range(env, server):
    server.drops = 1
    assert _download(server) == 0
    (first, none), (second, rng) = server.requests
    assert first == second == f"/{FILE}" and none is None
    offset = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
    assert 0 < offset < len(env.data)
    assert _sha(env.cached) == hashlib.sha256(env.data).hexdigest()


def test_resume_through_a_redirect_keeps_the_range(env, server):
    server.drops = 1
    assert main(["download-weights", "--mirror", f"{server.url}/moved", NAME]) == 0
    assert [r for _, r in server.requests][:2] == [None, None]
    (p1, r1), (p2, r2) = server.requests[2:]
    assert (p1, p2) == (f"/moved/{FILE}", f"/{FILE}") and r1 == r2 and r1.startswith("bytes=")
    assert env.cached.read_bytes() == env.data


def test_a_mirror_serving_the_cache_names(env, server):
    server.files = {f"{NAME}.pth.tar": env.data}  # e.g. `python -m http.server` in a copy of a cache
    assert _download(server) == 0
    assert server.requests == [(f"/{FILE}", None), (f"/{NAME}.pth.tar", None)]  # 404, then the cache's name
    assert env.cached.read_bytes() == env.data


def test_a_later_run_continues_the_part_file(env, server, tmp_path):
    server.drops = 1
    part = tmp_path / "x.part"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        fetch(f"{server.url}/{FILE}", part, len(env.data), None, retries=0, progress=False)
    kept = part.stat().st_size
    assert 0 < kept < len(env.data)
    fetch(f"{server.url}/{FILE}", part, len(env.data), hashlib.sha256(env.data).hexdigest(), progress=False)
    assert server.requests[-1][1] == f"bytes={kept}-" and part.read_bytes() == env.data


def test_corrupted_download_is_refused_and_not_moved_into_place(env, server, capsys):
    server.corrupt = True
    assert _download(server) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sha256" in err and f"{server.url}/{FILE}" in err and "refused" in err
    assert not env.cached.exists() and not list(env.cache.glob("*.part"))  # nothing to resume from: deleted


def test_sha256_pinned_on_the_command_line(env, server, capsys):
    env.table(sha256=None)  # the table knows none: --sha256 pins one
    assert _download(server, "--sha256", "0" * 64) == 2
    assert "sha256" in capsys.readouterr().err and not env.cached.exists()
    assert _download(server, "--sha256", hashlib.sha256(env.data).hexdigest()) == 0
    assert env.cached.read_bytes() == env.data


def test_server_without_range_support_restarts_from_zero(env, server):
    server.ranges = False
    part = env.cached.with_name(env.cached.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # left by an earlier run; the server cannot continue it
    assert _download(server) == 0
    assert server.requests == [(f"/{FILE}", "bytes=1000-")]  # asked to resume, got the whole file (200)
    assert env.cached.read_bytes() == env.data and not part.exists()


def test_offline_gives_one_line_with_the_ways_out(env, capsys):
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["download-weights", "--mirror", f"http://127.0.0.1:{port}", NAME]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot reach http://127.0.0.1:{port}/{FILE}")
    assert "--mirror" in err and str(env.cached) in err and "init-model" in err
    assert not env.cached.exists()


def test_wrong_shapes_are_refused(env, server, capsys):
    env.table(num_pcs=16)  # the table promises 16 PCs, the file has 8
    assert _download(server) == 2
    err = capsys.readouterr().err
    assert "num_pcs 8 (expected 16)" in err and not env.cached.exists() and not list(env.cache.glob("*.part"))


def test_list_shows_state_and_presets(env, server, capsys):
    assert main(["download-weights", "--list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["checkpoints"]}
    assert rows[NAME]["state"] == "-" and rows[NAME]["presets"] == []  # the test's model fits no preset
    assert rows["mapillary_WPCA512"]["presets"] == ["speed"]
    assert _download(server) == 0
    capsys.readouterr()
    assert main(["download-weights", "--list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "cached" in line and "resnet18 K=4 PCs=8" in line


def test_unknown_name_and_misused_sha256(env, capsys):
    assert main(["download-weights", "no_such_model"]) == 2
    assert "unknown checkpoint(s) no_such_model" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="nor is it a known checkpoint name"):
        Encoder.from_checkpoint("pitsburgh_WPCA512", load_config("speed").model, device="cpu")
    assert main(["download-weights", "--sha256", "0" * 64, "--all"]) == 2
    assert main(["download-weights", "--sha256", "abc", NAME]) == 2
    assert "expected 64 hex digits" in capsys.readouterr().err


def test_a_damaged_cached_file_is_replaced_once_the_new_one_passes(env, server, capsys):
    env.cached.parent.mkdir(parents=True)
    env.cached.write_bytes(env.data[: len(env.data) // 2])  # e.g. copied in half
    server.corrupt = True
    assert _download(server) == 2
    assert env.cached.stat().st_size == len(env.data) // 2  # kept: the new one failed
    server.corrupt = False
    assert _download(server) == 0 and "downloaded, verified" in capsys.readouterr().out
    assert env.cached.read_bytes() == env.data


# ----------------------------------------------------------------------------- --checkpoint NAME
def test_checkpoint_name_reads_the_cache(env, server, tmp_path, capsys, monkeypatch):
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    encode = ["encode", "--config", "speed", "--device", "cpu", "--out", str(tmp_path / "d.npz"), str(image)]
    # not downloaded: the exact command to run, and nothing is fetched
    assert main([*encode[:1], "--checkpoint", NAME, *encode[1:]]) == 2
    assert f"run `vlad-localization download-weights {NAME}`" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=f"download-weights {NAME}"):
        Encoder.from_checkpoint(NAME, load_config("speed").model, device="cpu")
    assert server.requests == []
    assert _download(server) == 0
    for name in (NAME, f"{NAME}.pth.tar"):
        assert main([*encode[:1], "--checkpoint", name, *encode[1:]]) == 0
        assert np.load(tmp_path / "d.npz")["global"].shape == (1, 8)
    enc = Encoder.from_checkpoint(NAME, load_config("speed").model, device="cpu")
    assert enc.identity()["checkpoint_sha256"] == _sha(env.cached)
    # a real file of that name wins over the cache
    other = tmp_path / "here"
    other.mkdir()
    raw = torch.load(io.BytesIO(env.data), weights_only=True)
    raw["state_dict"]["WPCA.0.bias"] += 1  # another model than the cached one
    torch.save(raw, other / NAME)
    monkeypatch.chdir(other)
    here = Encoder.from_checkpoint(NAME, load_config("speed").model, device="cpu")
    assert here.identity()["checkpoint_sha256"] == _sha(other / NAME) != _sha(env.cached)
