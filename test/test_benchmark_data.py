"""The synthetic maps of benchmarks/mapdb.py have the statistics their docstrings claim (the search
figures in the README rest on them)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def mapdb_bench():
    return load_benchmark("mapdb")


def test_route_keyframes_drift_and_revisits_have_the_measured_similarity(mapdb_bench):
    step, revisit = mapdb_bench.ROUTE_STEP_COS, mapdb_bench.ROUTE_REVISIT_COS
    x, q, src = mapdb_bench.synthetic_routes(5000, 512, 400, seed=3, route_len=500)
    assert x.shape == (5000, 512) and q.shape == (400, 512)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    within = np.arange(5000) % 500  # position along each run
    for k in (1, 2, 3):
        ok = within[:-k] + k < 500  # pairs inside one run
        lag = np.sum(x[:-k] * x[k:], axis=1)[ok]
        assert abs(lag.mean() - step ** k) < 0.01, k
    across = np.sum(x[:-500] * x[500:], axis=1)  # same position, different runs: unrelated
    assert abs(across.mean()) < 0.01
    assert abs(np.sum(q * x[src], axis=1).mean() - revisit) < 0.01


def test_cluster_places_are_revisited_near_duplicates(mapdb_bench):
    x, q, src = mapdb_bench.synthetic_clusters(4000, 512, 100, seed=1)
    cos = np.sum(q * x[src], axis=1)
    assert abs(cos.mean() - 0.96) < 0.01
    top1 = np.argmax(q @ x.T, axis=1)
    assert np.mean(top1 == src) > 0.95
