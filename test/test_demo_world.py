"""The demo's generated route: deterministic, fast, readable by iter_folder, places distinguishable."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from vlad_localization.demo.world import generate_route
from vlad_localization.images import iter_folder, load_rgb

S = 1_000_000_000


@pytest.fixture(scope="module")
def timed_route(tmp_path_factory):
    """(RouteInfo, CPU seconds to generate it: CPU time, as 4 test runs may share the cores)."""
    start = time.process_time()
    info = generate_route(tmp_path_factory.mktemp("route"), num_frames=40, height=240, width=320, seed=0)
    return info, time.process_time() - start


@pytest.fixture(scope="module")
def route(timed_route):
    return timed_route[0]


def descriptor(path) -> np.ndarray:
    """Downsampled grey image, zero-mean and unit-norm: dot products are NCCs."""
    g = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (32, 24), interpolation=cv2.INTER_AREA)
    g = g.astype(np.float64).ravel() - g.mean()
    return g / np.linalg.norm(g)


def test_layout_and_speed(timed_route):
    route, seconds = timed_route
    assert seconds < 5.0
    assert [p.name for p in route.ref_files[:3]] == ["000.png", "001.png", "002.png"]
    assert all(p.is_file() for p in route.ref_files + route.query_files)
    assert route.ground_truth == [(i, i) for i in range(40)]
    img = load_rgb(route.query_files[5])
    assert img.shape == (240, 320, 3) and img.std() > 20  # textured, not blank


def test_poses_csv_is_read_by_iter_folder(route):
    ref = list(iter_folder(route.ref_dir, route.poses_csv))
    query = list(iter_folder(route.query_dir, route.poses_csv))
    assert len(ref) == len(query) == 40 and all(f.pose is not None for f in ref + query)
    assert [f.stamp_ns for f in ref[:2]] == [0, S]
    assert query[0].stamp_ns - ref[-1].stamp_ns == 120 * S  # loop closures pass a 120 s time gap
    xs = [f.pose.position[0] for f in ref]
    assert xs == sorted(xs) and xs[1] - xs[0] == pytest.approx(3.0)
    for r, q in zip(ref, query):  # the revisit is within a couple of metres of the mapped place
        assert abs(r.pose.position[0] - q.pose.position[0]) < 1.5


def test_deterministic_per_seed(tmp_path):
    again = generate_route(tmp_path / "a", num_frames=4, seed=0)
    same = generate_route(tmp_path / "b", num_frames=4, seed=0)
    other = generate_route(tmp_path / "c", num_frames=4, seed=1)
    for a, b, c in zip(again.ref_files + again.query_files, same.ref_files + same.query_files,
                       other.ref_files + other.query_files):
        assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    assert again.poses_csv.read_text() == same.poses_csv.read_text()


def test_ground_truth_pairs_look_alike_and_places_differ(route):
    refs = np.array([descriptor(p) for p in route.ref_files])
    queries = np.array([descriptor(p) for p in route.query_files])
    sim = queries @ refs.T
    n = len(refs)
    matched = np.diag(sim)
    far = np.array([sim[i, j] for i in range(n) for j in range(n) if abs(i - j) >= 3])
    assert matched.mean() > far.mean() + 0.3
    assert (sim.argmax(axis=1) == np.arange(n)).mean() >= 0.8  # even a trivial descriptor mostly retrieves
    # but the revisit is not a copy: lighting and viewpoint changed
    assert all(np.abs(load_rgb(q).astype(int) - load_rgb(r)).mean() > 10
               for q, r in zip(route.query_files[:5], route.ref_files[:5]))


def test_rejects_degenerate_sizes(tmp_path):
    with pytest.raises(ValueError, match="num_frames >= 1"):
        generate_route(tmp_path, num_frames=0)
