"""The demo (`make demo` = `python -m vlad_localization.demo`), end to end on a short generated
route: init-model, build-map, the real node as a subprocess, images over DDS, the summary."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from vlad_localization.demo import runner


def test_demo_runs_end_to_end_on_a_short_route(tmp_path, vgg16_weights, ros_domain_id):
    proc = subprocess.run(
        [sys.executable, "-m", "vlad_localization.demo", "--frames", "8", "--work", str(tmp_path),
         "--weights", str(vgg16_weights)],
        capture_output=True, text=True, timeout=400, env=dict(os.environ))
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "DEFAULT INPUT: a generated synthetic street route" in out
    assert re.search(r"LOOP CLOSURE query +\d+ .* patch score \d\.\d{3}", out), out
    recall = re.search(r"recall@1 +(\d+)/8", out)
    assert recall and int(recall.group(1)) >= 6, out
    assert re.search(r"latency +median \d+ ms", out) and "Traceback" not in proc.stderr


def test_demo_falls_back_to_a_seeded_random_vgg16(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SHARED_WEIGHTS", tmp_path / "absent.pth")
    path, text = runner.resolve_weights(None, tmp_path)
    assert path.is_file() and "RANDOM-INITIALISED" in text
    (tmp_path / "again").mkdir()
    again, _ = runner.resolve_weights(None, tmp_path / "again")
    import torch

    a, b = torch.load(path), torch.load(again)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same weights every time
