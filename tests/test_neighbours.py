"""Pair search, DBSCAN and nearest neighbours of unit vectors: the exact search, and the faiss index
against it, on a few thousand synthetic vectors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

from cl_ml_tools.data import neighbours
from cl_ml_tools.models import l2_normalise

INDEX = neighbours.Search(exact_below=0)


def clustered(groups: int, size: int, strangers: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors: ``size`` noisy copies of each of ``groups`` directions (cosine about 0.8 between copies),
    then ``strangers`` random ones, shuffled."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(groups, dim)))
    copies = centres[:, None, :] + rng.normal(size=(groups, size, dim)) * 0.5 / np.sqrt(dim)
    vectors = np.vstack([copies.reshape(-1, dim), rng.normal(size=(strangers, dim))])
    return l2_normalise(vectors[rng.permutation(len(vectors))])


def pairs(search: neighbours.SelfSearch, threshold: float) -> list[tuple[int, int]]:
    out = []
    for b in search.blocks(once=True):
        r, c = np.nonzero(b.once & (b.sims >= threshold))
        i, j = b.rows[r], b.cols[c]
        out += list(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))
    return out


def test_exact_blocks_find_every_pair_once() -> None:
    vectors = clustered(50, 6, 100)
    found = pairs(neighbours.SelfSearch(vectors), 0.6)
    sims = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sims >= 0.6, k=1))
    assert sorted(found) == sorted(zip(i.tolist(), j.tolist(), strict=True))


def test_the_index_counts_each_pair_it_finds_once_and_finds_them_all_here() -> None:
    vectors = clustered(300, 8, 600, seed=1)
    exact = pairs(neighbours.SelfSearch(vectors), 0.6)
    found = pairs(neighbours.SelfSearch(vectors, INDEX), 0.6)
    assert len(found) == len(set(found))
    assert set(found) == set(exact)


@pytest.mark.parametrize("min_samples", [1, 2, 3, 5])
@pytest.mark.parametrize("search", [neighbours.SEARCH, INDEX], ids=["exact", "index"])
def test_dbscan_gives_scikit_learns_labels(min_samples: int, search: neighbours.Search) -> None:
    # Groups of 2-6 vectors, so that at 3 and 5 samples some points are border points or noise.
    vectors = np.vstack([clustered(150, k, 0, seed=k) for k in range(2, 7)] + [clustered(0, 0, 500, seed=9)])
    expected = DBSCAN(eps=float(np.sqrt(2 * 0.4)), min_samples=min_samples).fit_predict(vectors)
    assert (neighbours.dbscan(vectors, 0.6, min_samples, search) == expected).all()


def test_dbscan_of_a_subset_of_rows() -> None:
    vectors = clustered(100, 5, 200, seed=4)
    rows = np.arange(0, len(vectors), 2)
    expected = neighbours.dbscan(vectors[rows], 0.6, 2)
    assert (neighbours.dbscan(neighbours.Rows(vectors, rows), 0.6, 2, INDEX) == expected).all()


@pytest.mark.parametrize("density", [0.001, 0.05, 0.5])
def test_spanning_pairs_connect_like_the_whole_mask(density: float) -> None:
    rng = np.random.default_rng(int(density * 1000))
    mask = rng.random((300, 200)) < density
    r, c = neighbours.spanning(mask)
    assert mask[r, c].all()

    def components(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        graph = coo_matrix((np.ones(len(rows)), (rows, 300 + cols)), shape=(500, 500))
        return connected_components(graph, directed=False)[1]

    whole, tree = components(*np.nonzero(mask)), components(r, c)
    assert len(set(zip(whole.tolist(), tree.tolist(), strict=True))) == len(set(whole.tolist()))
    assert len(set(tree.tolist())) == len(set(whole.tolist()))


def test_forest_compacts_without_changing_components(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 1000, size=(2, 700))
    whole = neighbours.Forest(1000)
    whole.join(a, b)
    monkeypatch.setattr(neighbours.Forest, "KEEP", 10)
    small = neighbours.Forest(1000)
    for start in range(0, 700, 7):
        small.join(a[start : start + 7], b[start : start + 7])
    assert small._count < 2 * 1000
    assert (small.labels() == whole.labels()).all()
    assert whole.labels()[0] == 0 and np.all(np.diff(np.unique(whole.labels(), return_index=True)[1]) > 0)


@pytest.mark.parametrize("search", [neighbours.SEARCH, INDEX], ids=["exact", "index"])
def test_nearest_is_the_best_dot_product(search: neighbours.Search) -> None:
    database = clustered(400, 1, 0, seed=5)
    queries = l2_normalise(database[::3] + np.random.default_rng(6).normal(size=(134, 64)) * 0.05)
    best, score = neighbours.nearest(queries, database, search)
    sims = queries @ database.T
    assert (best == sims.argmax(axis=1)).all()
    assert np.allclose(score, sims.max(axis=1), atol=1e-6)
