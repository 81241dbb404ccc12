"""The Flat index's single-query BLAS path returns exactly what faiss' own search returns."""
from __future__ import annotations

import numpy as np

from vlad_localization.mapdb.index import GlobalIndex


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_blas_search_equals_faiss_search_with_ids_and_appends():
    rng = np.random.default_rng(3)
    x = _unit(rng, 5000, 64)
    index = GlobalIndex.build("Flat", x, np.arange(5000) * 3 + 11)
    queries = x[:25] + 0.05 * _unit(rng, 25, 64)
    for _ in range(2):  # before and after an append (faiss may move its storage)
        sims, ids = index.index.search(queries, 10)  # faiss, batched
        for i, q in enumerate(queries):
            s, j = index.search(q, 10)  # one query: the BLAS path
            np.testing.assert_array_equal(j[0], ids[i])
            np.testing.assert_allclose(s[0], sims[i], atol=1e-5)
            assert np.all(np.diff(s[0]) <= 0)
        index.add(_unit(rng, 300, 64), np.arange(300) + 100_000 + 1000 * _)
    _, all_ids = index.search(queries[0], 10**6)  # k larger than the map: everything, sorted
    assert all_ids.shape == (1, 5600) and len(set(all_ids[0].tolist())) == 5600


def test_lossy_index_shortlist_is_rescored_exactly_and_lossless_ignores_exact():
    rng = np.random.default_rng(4)
    x = _unit(rng, 4000, 64)
    queries = x[:20] + 0.1 * _unit(rng, 20, 64)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pq = GlobalIndex.build("IVF4,PQ8x4", x)
    pq.set_params(nprobe=4)
    approx, _ = pq.search(queries, 10)
    sims, ids = pq.search(queries, 10, exact=x)
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", queries, x[ids]), atol=1e-6)  # exact values
    assert np.all(np.diff(sims, axis=1) <= 0)
    assert np.abs(approx - np.einsum("qd,qkd->qk", queries, x[pq.search(queries, 10)[1]])).max() > 1e-3  # PQ is lossy
    _, truth = GlobalIndex.build("Flat", x).search(queries, 10)
    assert np.mean(ids[:, 0] == truth[:, 0]) == 1.0
    flat = GlobalIndex.build("Flat", x)
    np.testing.assert_array_equal(flat.search(queries, 10, exact=x)[1], flat.search(queries, 10)[1])
