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
