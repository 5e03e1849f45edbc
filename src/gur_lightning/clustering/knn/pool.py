"""The per-row candidate pool the engines fill: the best ``depth`` keys, kept sorted.

A candidate's key is ``2 x_i.x_j - |x_j|^2`` (larger is closer; docs/performance.md, techniques
1-2). The pool is merged in batches (:class:`_PendingCandidates`), by rank counting for a few new
candidates per row and by a padded sort otherwise.
"""

from __future__ import annotations

import numpy as np

MERGE_WIDTH = 64
"""Most candidates per row merged in one padded pass (more are merged in further passes)."""
FLUSH_ENTRIES_MIN = 1 << 16
FLUSH_ENTRIES_PER_ROW = 8
"""Pending candidates are merged once max(2^16, 8 N) pile up (see :class:`_PendingCandidates`):
fresher thresholds let fewer candidates through than the former max(2^18, 16 N) did."""
RANK_MERGE_WIDTH = 16
"""Up to this many new candidates per row, the merge places every entry by counting (rank
merge) instead of sorting the concatenation: O(depth x width) comparisons and no sort."""
MERGE_ROWS = 8192
"""Rows per padded merge: bounds the merge's temporaries to ~10 MB per (depth + width) column."""


class CandidatePool:
    """Per-row best-``depth`` candidates by float32 key, kept sorted (descending key).

    numpy arrays: on small ragged arrays numpy's sorts and scatters are several times faster
    than torch's CPU kernels, and the pool is merged once per block.

    Args:
        n: Rows (points).
        depth: Candidates kept per row.

    Attributes:
        key: (n, depth) float32 keys ``2 x_i.x_j - |x_j|^2``, descending; ``-inf`` when empty.
        idx: (n, depth) int64 column indices ``j``; -1 when empty.
        dot: (n, depth) float32 inner products ``x_i.x_j``.
    """

    def __init__(self, n: int, depth: int) -> None:
        self.depth = depth
        self.key = np.full((n, depth), -np.inf, dtype=np.float32)
        self.idx = np.full((n, depth), -1, dtype=np.int64)
        self.dot = np.zeros((n, depth), dtype=np.float32)

    @property
    def theta(self) -> np.ndarray:
        """Running threshold per row: the key a new candidate must beat (the pool's last key)."""
        return self.key[:, self.depth - 1]

    def merge(
        self, rows: np.ndarray, cols: np.ndarray, keys: np.ndarray, dots: np.ndarray
    ) -> None:
        """Merge candidates (row, col, key, dot), each pair new to its row, into the pool.

        Candidates are first re-checked against the current thresholds (they may have been
        collected against older, lower ones), then merged in passes of at most
        :data:`MERGE_WIDTH` per row, so that a row with many candidates cannot blow up the
        padded layout.
        """
        keep = keys > self.theta[rows]
        if not keep.any():
            return
        rows, cols, keys, dots = rows[keep], cols[keep], keys[keep], dots[keep]
        order = np.argsort(rows, kind="stable")
        rows, cols, keys, dots = rows[order], cols[order], keys[order], dots[order]
        starts = np.r_[True, rows[1:] != rows[:-1]]
        first = np.flatnonzero(starts)
        counts = np.diff(np.r_[first, rows.size])
        line = np.cumsum(starts) - 1
        slot = np.arange(rows.size) - first[line]
        # Rows are bucketed by candidate count (padded to the next power of two), so that a
        # few busy rows do not pad everyone's sort; slots beyond MERGE_WIDTH go round again.
        width = np.minimum(1 << np.ceil(np.log2(counts)).astype(np.int64), MERGE_WIDTH)
        entry_width = width[line]
        for w in np.unique(width).tolist():
            sel = (entry_width == w) & (slot < w)
            self._merge_padded(rows[sel], cols[sel], keys[sel], dots[sel], slot[sel], w)
        rest = slot >= MERGE_WIDTH
        if rest.any():
            self.merge(rows[rest], cols[rest], keys[rest], dots[rest])

    def _merge_padded(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        keys: np.ndarray,
        dots: np.ndarray,
        slot: np.ndarray,
        width: int,
    ) -> None:
        """Merge row-sorted candidates with per-row slots ``0..width-1`` by one row-wise sort.

        Up to :data:`RANK_MERGE_WIDTH` candidates per row are placed by rank counting
        (:meth:`_rank_merge`); wider rows are sorted together with their pool row.
        """
        depth = self.depth
        starts = np.r_[True, rows[1:] != rows[:-1]]
        first = np.flatnonzero(starts)
        if first.size > MERGE_ROWS:
            cut = np.r_[first[::MERGE_ROWS], rows.size]
            for a, b in zip(cut[:-1], cut[1:], strict=True):
                self._merge_padded(rows[a:b], cols[a:b], keys[a:b], dots[a:b], slot[a:b], width)
            return
        urows = rows[starts]
        line = np.cumsum(starts) - 1
        # The candidates as a padded (U, width) block next to the (U, depth) pool rows.
        new_key = np.full((urows.size, width), -np.inf, dtype=np.float32)
        new_idx = np.full((urows.size, width), -1, dtype=np.int64)
        new_dot = np.zeros((urows.size, width), dtype=np.float32)
        new_key[line, slot], new_idx[line, slot], new_dot[line, slot] = keys, cols, dots
        if width <= RANK_MERGE_WIDTH:
            self._rank_merge(urows, new_key, new_idx, new_dot)
            return
        all_key = np.concatenate([self.key[urows], new_key], axis=1)
        top = np.argsort(-all_key, axis=1, kind="stable")[:, :depth]
        self.key[urows] = np.take_along_axis(all_key, top, axis=1)
        all_idx = np.concatenate([self.idx[urows], new_idx], axis=1)
        self.idx[urows] = np.take_along_axis(all_idx, top, axis=1)
        all_dot = np.concatenate([self.dot[urows], new_dot], axis=1)
        self.dot[urows] = np.take_along_axis(all_dot, top, axis=1)

    def _rank_merge(
        self, urows: np.ndarray, new_key: np.ndarray, new_idx: np.ndarray, new_dot: np.ndarray
    ) -> None:
        """Merge padded (U, W) candidates into pool rows ``urows`` by rank counting.

        The result is the stable sort of (pool row, candidates in slot order) by descending
        key, cut at ``depth``: on equal keys pool entries come first, then candidates in slot
        order. After a stable sort of the candidates, an entry's place in the merged row is its
        own place plus the number of entries of the other list that precede it.
        """
        depth, width = self.depth, new_key.shape[1]
        if width > 1:
            order = np.argsort(-new_key, axis=1, kind="stable")
            new_key = np.take_along_axis(new_key, order, axis=1)
            new_idx = np.take_along_axis(new_idx, order, axis=1)
            new_dot = np.take_along_axis(new_dot, order, axis=1)
        old_key = self.key[urows]
        # Pool entry i is preceded by the candidates with a strictly larger key (ties: pool
        # first); candidate j by the pool entries with a key at least as large.
        old_pos = np.arange(depth) + (new_key[:, None, :] > old_key[:, :, None]).sum(axis=2)
        new_pos = np.arange(width) + (old_key[:, None, :] >= new_key[:, :, None]).sum(axis=2)
        base = (np.arange(urows.size) * depth)[:, None]
        keep_old, keep_new = old_pos < depth, new_pos < depth
        at_old, at_new = (base + old_pos)[keep_old], (base + new_pos)[keep_new]
        for table, old, new in (
            (self.key, old_key, new_key),
            (self.idx, self.idx[urows], new_idx),
            (self.dot, self.dot[urows], new_dot),
        ):
            merged = np.empty((urows.size, depth), dtype=table.dtype)
            flat = merged.reshape(-1)
            flat[at_old] = old[keep_old]
            flat[at_new] = new[keep_new]
            table[urows] = merged


class _PendingCandidates:
    """Candidates collected over several blocks and merged into the pool in one go.

    Re-sorting a row's pool costs the same whether one or ten candidates arrive, so merging
    after every block makes the pool upkeep dominate at large N (49 blocks per row at 100k).
    Candidates are filtered against the thresholds known when their block is scanned (a stale,
    lower threshold only lets a few more through) and merged once ``flush_entries`` pile up
    (the CPU engine passes max(:data:`FLUSH_ENTRIES_MIN`, :data:`FLUSH_ENTRIES_PER_ROW` x N)).
    """

    def __init__(self, pool: CandidatePool, flush_entries: int) -> None:
        self.pool = pool
        self.flush_entries = flush_entries
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.size = 0

    def add(self, rows: np.ndarray, cols: np.ndarray, keys: np.ndarray, dots: np.ndarray) -> None:
        if rows.size:
            self.parts.append((rows, cols, keys, dots))
            self.size += rows.size
            if self.size >= self.flush_entries:
                self.flush()

    def flush(self) -> None:
        if self.parts:
            self.pool.merge(*(np.concatenate(p) for p in zip(*self.parts, strict=True)))
        self.parts, self.size = [], 0
