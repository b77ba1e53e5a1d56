"""Similar pairs of unit vectors (cosine ≥ a threshold) and nearest neighbours, for ``duplicates`` (near
groups) and ``people`` (DBSCAN neighbourhoods, the nearest person of a lone face), without comparing every
pair once an archive is large.

Up to :attr:`Search.exact_below` vectors every pair is compared: blocks of rows times the matrix, one BLAS
product each, so small archives (and the tests) get exactly the brute-force answer. Above that, an inverted
file from faiss: spherical k-means on a sample (``faiss.Kmeans``) gives ``lists`` centroids, every vector is
filed in the list of its nearest centroid and probes its ``probes`` nearest lists (``faiss.IndexFlatIP``).
A pair is compared when one vector's list is among those the other probes. The comparisons of one list are
one matrix product, every vector probing it times every vector filed in it: the arithmetic of faiss's
``IndexIVFFlat`` range search, but 6× faster on 2 cores (dense BLAS instead of one scan per query) and never
holding more than one block, where the range search returns all pairs at once (236 million, 3.9 GB, for
200 000 synthetic faces). Measurements, recall and the choice of library: docs/design.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

EXACT_BELOW = 20_000
# Entries of one block's similarity matrix (float32): 64 MiB.
CELLS = 1 << 24
# Rows of one block of the exact search.
BLOCK = 2048
# k-means sees this many vectors per centroid: 10 iterations over 32 per list keep training a few seconds
# at 2 million vectors; more did not move the recall (docs/design.md).
TRAIN_PER_LIST = 32


@dataclass(frozen=True)
class Search:
    """When to use the index and how hard to search it."""

    exact_below: int = EXACT_BELOW
    """Compare every pair up to this many vectors (for a query × database search: this many squared pairs)."""
    probes: int = 8
    """Lists each vector probes; recall grows and speed falls with it (docs/design.md)."""
    seed: int = 0
    """Of the k-means sample and initialisation: the same data always gives the same lists."""


SEARCH = Search()


@dataclass(frozen=True)
class Rows:
    """Some rows of a matrix, by position, without copying them out (the people step clusters 85 % of two
    million faces: a copy would be another 3.5 GB)."""

    matrix: np.ndarray
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.matrix) if self.ids is None else len(self.ids)

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self.matrix[positions if self.ids is None else self.ids[positions]]

    def subset(self, positions: np.ndarray) -> Rows:
        return Rows(self.matrix, positions if self.ids is None else self.ids[positions])

    def chunks(self, size: int = 65536) -> Iterator[np.ndarray]:
        for start in range(0, len(self), size):
            yield self.take(np.arange(start, min(start + size, len(self))))


@dataclass(frozen=True)
class Block:
    """Cosines of some queries (``rows``, ascending positions) with some database vectors (``cols``); in a
    search of vectors among themselves, a vector's cosine with itself is −inf, so no threshold pairs it."""

    rows: np.ndarray
    cols: np.ndarray
    sims: np.ndarray
    once: np.ndarray | None = None
    """In a search of vectors among themselves (when asked for): the entries that are the one occurrence of
    their unordered pair over all blocks."""


def as_rows(vectors: np.ndarray | Rows) -> Rows:
    return vectors if isinstance(vectors, Rows) else Rows(vectors)


class SelfSearch:
    """The pairs the search compares among ``vectors`` (unit rows), as blocks. The index (``lists``) is
    trained once and can be handed on: DBSCAN's passes, its second search among lone points and the
    nearest-person search all file vectors in the same lists, so k-means runs once per step."""

    def __init__(
        self,
        vectors: np.ndarray | Rows,
        search: Search = SEARCH,
        lists: _Lists | None = None,
        probes: int | None = None,
    ):
        self.data = as_rows(vectors)
        self.lists = lists
        self.probed = None
        if lists is not None or len(self.data) > search.exact_below:
            self.lists = lists or _Lists.train(self.data, search)
            self.probed = self.lists.probe(self.data, probes or search.probes)

    def blocks(self, once: bool = False) -> Iterator[Block]:
        """With ``once``, each block says which of its entries count each pair once."""
        if self.probed is None:
            return exact_blocks(self.data, once=once)
        return _list_blocks(self.data, self.data, self.probed[:, 0], self.probed, same=True, once=once)


def exact_blocks(vectors: np.ndarray | Rows, block: int = BLOCK, once: bool = False) -> Iterator[Block]:
    """Every pair: rows ``[s, s + block)`` against rows ``[s, n)``."""
    data = as_rows(vectors)
    n = len(data)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        for b in _tiles(data, data, rows, np.arange(start, n), same=True):
            yield Block(b.rows, b.cols, b.sims, b.cols[None, :] > b.rows[:, None]) if once else b


def nearest(
    queries: np.ndarray | Rows, database: np.ndarray, search: Search = SEARCH, lists: _Lists | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the database row with the highest cosine (first on ties) and that cosine. With the
    index (``lists``, or lists trained on the database when every pair would be too many), the best among
    the lists the query probes, :data:`RESCUE` times the probes: the database (people's centroids) is far
    smaller than the vectors the first search was tuned for, so probing more lists costs little. −1 and −inf
    where those lists hold nothing."""
    q = as_rows(queries)
    best = np.full(len(q), -1, dtype=np.int64)
    score = np.full(len(q), -np.inf, dtype=np.float32)
    if not len(q) or not len(database):
        return best, score
    db = Rows(database)
    if lists is None and len(q) * len(database) <= search.exact_below**2:
        blocks = _all_blocks(q, db)
    else:
        lists = lists or _Lists.train(db, search)
        blocks = _list_blocks(q, db, lists.probe(db, 1)[:, 0], lists.probe(q, search.probes * RESCUE))
    for b in blocks:
        pick = b.sims.argmax(axis=1)
        top = b.sims[np.arange(len(pick)), pick]
        # Blocks come in ascending database order within a list, not across lists: on a tie keep the lower row.
        better = (top > score[b.rows]) | ((top == score[b.rows]) & (b.cols[pick] < best[b.rows]))
        best[b.rows[better]] = b.cols[pick[better]]
        score[b.rows[better]] = top[better]
    return best, score


def _all_blocks(queries: Rows, database: Rows, block: int = 4096) -> Iterator[Block]:
    every = np.arange(len(database))
    for start in range(0, len(queries), block):
        yield from _tiles(queries, database, np.arange(start, min(start + block, len(queries))), every)


@dataclass(frozen=True)
class _Lists:
    """The coarse quantiser of an inverted file: unit centroids in a faiss inner-product index."""

    index: object

    @classmethod
    def train(cls, data: Rows, search: Search) -> _Lists:
        import faiss  # only the large-archive path needs it

        n = len(data)
        count = max(1, min(n // TRAIN_PER_LIST, round(math.sqrt(n * search.probes))))
        rng = np.random.default_rng(search.seed)
        sample = data.take(np.sort(rng.choice(n, size=min(n, count * TRAIN_PER_LIST), replace=False)))
        dim = sample.shape[1]
        kmeans = faiss.Kmeans(dim, count, niter=10, spherical=True, seed=search.seed, min_points_per_centroid=1,
                              max_points_per_centroid=TRAIN_PER_LIST)  # fmt: skip
        kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
        index = faiss.IndexFlatIP(dim)
        index.add(kmeans.centroids)
        return cls(index)

    def probe(self, data: Rows, probes: int) -> np.ndarray:
        """(n, probes) lists nearest to each vector, nearest first."""
        k = min(probes, self.index.ntotal)
        if not len(data):
            return np.zeros((0, k), dtype=np.int64)
        return np.concatenate(
            [self.index.search(np.ascontiguousarray(c, dtype=np.float32), k)[1] for c in data.chunks()]
        )


def _list_blocks(
    queries: Rows, database: Rows, home: np.ndarray, probed: np.ndarray, same: bool = False, once: bool = False
) -> Iterator[Block]:
    """Per list: every query probing it against every database vector filed in it. ``same``: the queries
    are the database (``probed[:, 0]`` is then each one's home); ``once`` marks a pair found from both sides
    in the lower-numbered of its two lists, a pair within one list in its upper triangle."""
    count = int(max(home.max(), probed.max())) + 1
    filed = np.argsort(home, kind="stable")
    filed_at = np.searchsorted(home[filed], np.arange(count + 1))
    flat = probed.ravel()
    probing = np.argsort(flat, kind="stable")
    probing_at = np.searchsorted(flat[probing], np.arange(count + 1))
    probing //= probed.shape[1]
    for c in range(count):
        cols = filed[filed_at[c] : filed_at[c + 1]]
        rows = probing[probing_at[c] : probing_at[c + 1]]
        if not len(cols) or not len(rows):
            continue
        for b in _tiles(queries, database, rows, cols, same):
            if not once:
                yield b
                continue
            row_home = home[b.rows]
            # The pair's other occurrence, in the row's own list, exists when the column vector probes it.
            seen_there = _probes(probed[b.cols], row_home)
            own = (row_home == c)[:, None]
            mark = np.where(own, b.cols[None, :] > b.rows[:, None], (c < row_home)[:, None] | ~seen_there)
            yield Block(b.rows, b.cols, b.sims, mark)


def _probes(probed: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """``[i, j]``: whether the vector of row ``j`` of ``probed`` probes list ``lists[i]``; through a table of
    the few distinct lists, not a comparison per entry and probe."""
    distinct, slot = np.unique(lists, return_inverse=True)
    at = np.searchsorted(distinct, probed).clip(max=len(distinct) - 1)
    hit = distinct[at] == probed
    table = np.zeros((len(probed), len(distinct)), dtype=bool)
    table[np.nonzero(hit)[0], at[hit]] = True
    return table[:, slot].T


def _tiles(queries: Rows, database: Rows, rows: np.ndarray, cols: np.ndarray, same: bool = False) -> Iterator[Block]:
    """``rows × cols`` (both ascending) in products of at most :data:`CELLS` entries; ``same``: queries and
    database are one matrix, and a vector's entry with itself is set to −inf."""
    col_step = min(len(cols), 65536)
    row_step = max(1, CELLS // max(col_step, 1))
    for c0 in range(0, len(cols), col_step):
        c = cols[c0 : c0 + col_step]
        right = database.take(c)
        for r0 in range(0, len(rows), row_step):
            r = rows[r0 : r0 + row_step]
            sims = queries.take(r) @ right.T
            if same:
                at = np.searchsorted(r, c).clip(max=len(r) - 1)
                itself = np.flatnonzero(r[at] == c)
                sims[at[itself], itself] = -np.inf
            yield Block(r, c, sims)


class Forest:
    """Connected components of ``n`` items fed edges a block at a time, in bounded memory: edges are kept
    until they outnumber the items, then replaced by one edge from each item to its component's first."""

    KEEP = 1 << 20
    """Edges kept before compacting, at least (twice the items, if more)."""

    def __init__(self, n: int):
        self.n = n
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._count = 0

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a):
            self._a.append(np.asarray(a, dtype=np.int64))
            self._b.append(np.asarray(b, dtype=np.int64))
            self._count += len(a)
            if self._count > 2 * max(self.n, self.KEEP):
                labels = self.labels()
                first = np.unique(labels, return_index=True)[1][labels]
                items = np.flatnonzero(first != np.arange(self.n))
                self._a, self._b, self._count = [items], [first[items]], len(items)

    def labels(self) -> np.ndarray:
        """Component of each item, numbered 0, 1, … in the order of their first items."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        a = np.concatenate(self._a) if self._a else np.zeros(0, np.int64)
        b = np.concatenate(self._b) if self._b else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(self.n, self.n)).tocsr()
        labels = connected_components(graph, directed=False)[1]
        _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
        return np.argsort(np.argsort(first))[inverse]


def spanning(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row, column) of the boolean ``mask`` that connect the same rows and columns as all of it; every
    row and column with a pair in the mask is in one of them. A dense block (one person's faces: millions of
    neighbour pairs) costs a few passes over the mask instead of a list of its pairs: every row and column
    is joined to its first neighbour, then, while two trees are still linked by the mask, each row and
    column to its first neighbour in another tree (Borůvka's steps: the number of trees at least halves)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_rows, n_cols = mask.shape
    a = [np.zeros(0, np.int64)]
    b = [np.zeros(0, np.int64)]
    links = mask
    while True:
        first_col, first_row = links.argmax(axis=1), links.argmax(axis=0)
        rows = np.flatnonzero(links[np.arange(n_rows), first_col])
        cols = np.flatnonzero(links[first_row, np.arange(n_cols)])
        if not len(rows):
            return np.concatenate(a), np.concatenate(b)
        a += [rows, first_row[cols]]
        b += [first_col[rows], cols]
        edges = np.concatenate(a), n_rows + np.concatenate(b)
        graph = coo_matrix((np.ones(len(edges[0]), np.int8), edges), shape=(n_rows + n_cols,) * 2)
        tree = connected_components(graph, directed=False)[1]
        links = mask & (tree[:n_rows, None] != tree[None, n_rows:])


def dbscan(
    vectors: np.ndarray | Rows | SelfSearch, min_cosine: float, min_samples: int, search: Search = SEARCH
) -> np.ndarray:
    """Cluster labels (−1: noise) as scikit-learn's ``DBSCAN(min_samples=min_samples)`` gives them for
    neighbours with cosine ≥ ``min_cosine``, numbered alike (by each cluster's first core point; a border
    point in the first cluster that reaches it), from the pairs the search finds: a core point has at least
    ``min_samples`` − 1 neighbours, a cluster is core points linked by neighbours plus their other
    neighbours. Only the pairs' components and the border points' few neighbours are held, never the pairs.

    With the index, the vectors it found no neighbour for are searched again among themselves with
    :data:`RESCUE` times the probes: a person seen in two or three photos has no centroid of their own, so
    those faces land in unrelated lists and their pairs are the ones the first search misses; they are also
    few (strangers, mostly), so the second search costs a fraction of the first (docs/design.md)."""
    main = vectors if isinstance(vectors, SelfSearch) else SelfSearch(vectors, search)
    n = len(main.data)
    searches = [(main, np.arange(n))]
    forest = Forest(n)
    if min_samples <= 2:
        # Every point with a neighbour is core: one pass per search gives both the cores and their links.
        found = np.zeros(n, dtype=bool)
        for pairs, ids in _with_rescue(searches, search, lambda: ~found):
            for b in pairs.blocks():
                r, c = spanning(b.sims >= min_cosine)
                i, j = ids[b.rows[r]], ids[b.cols[c]]
                found[i] = found[j] = True
                forest.join(i, j)
        return _labels(forest, found | (min_samples <= 1))
    degree = np.zeros(n, dtype=np.int64)
    for pairs, ids in _with_rescue(searches, search, lambda: degree == 0):
        for b in pairs.blocks(once=True):
            near = (b.sims >= min_cosine) & b.once
            np.add.at(degree, ids[b.rows], near.sum(axis=1))
            np.add.at(degree, ids[b.cols], near.sum(axis=0))
    core = degree + 1 >= min_samples
    borders: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64),) * 2]
    for pairs, ids in searches:
        for b in pairs.blocks():
            near = b.sims >= min_cosine
            i, j = ids[b.rows], ids[b.cols]
            row_core, col_core = core[i][:, None], core[j][None, :]
            r, c = spanning(near & row_core & col_core)
            forest.join(i[r], j[c])
            # A non-core point has fewer than min_samples - 1 neighbours, so these lists stay short.
            r, c = np.nonzero(near & (row_core != col_core))
            borders.append((np.where(core[i[r]], j[c], i[r]), np.where(core[i[r]], i[r], j[c])))
    return _labels(forest, core, np.concatenate([a for a, _ in borders]), np.concatenate([b for _, b in borders]))


RESCUE = 8


def _with_rescue(
    searches: list[tuple[SelfSearch, np.ndarray]], search: Search, alone: Callable[[], np.ndarray]
) -> Iterator[tuple[SelfSearch, np.ndarray]]:
    """The first search of ``searches``, then, if it used the index, a second one among the points
    ``alone()`` names once the first is done; appended to ``searches`` for later passes."""
    main = searches[0][0]
    yield searches[0]
    if main.lists is None:
        return
    ids = np.flatnonzero(alone())
    if len(ids) > 1:
        # Lists of their own, fitted to these points (fewer than the first search's), probed more widely.
        again = SelfSearch(main.data.subset(ids), replace(search, exact_below=0), probes=search.probes * RESCUE)
        searches.append((again, ids))
        yield searches[-1]


def _labels(
    forest: Forest, core: np.ndarray, border: np.ndarray | None = None, reached_by: np.ndarray | None = None
) -> np.ndarray:
    """DBSCAN's labels from the components of the core points and the (border, core neighbour) pairs."""
    labels = np.full(len(core), -1, dtype=np.int64)
    component = forest.labels()[core]
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    labels[core] = np.argsort(np.argsort(first))[inverse]
    if border is not None and len(border):
        best = np.full(len(core), np.iinfo(np.int64).max)
        np.minimum.at(best, border, labels[reached_by])
        labels[border] = best[border]
    return labels
