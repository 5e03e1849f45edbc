"""Exact k-nearest neighbours by squared Euclidean distance (docs/method.md §7.2, step 1).

The reference ranks every point's neighbours with a faiss ``IndexFlatL2`` search that includes
the point itself. This module returns the same lists, computed so that they are *exact*: the
sets of the first ``b`` neighbours, for each boundary ``b`` the Jaccard distance depends on (k2,
round(k1/2) + 1 and k1), equal those of the float64 order with ties broken by the lower index.

Three engines produce a "pool" of the best ``k + 1 + pool_extra`` candidates per row by float32
key ``2 x_i.x_j - |x_j|^2`` (larger is closer; it equals ``|x_i|^2 - d_ij``, so gaps between keys
are gaps between squared distances):

* CPU torch (default): a symmetric blocked Gram matrix. Each block pair is multiplied once and
  serves both its rows and its columns; the diagonal blocks seed a per-row running threshold (the
  pool's last key), after which a block only costs a comparison against it and a small merge
  (docs/performance.md, techniques 1-2).
* GPU torch: row chunks against all points and ``torch.topk``.
* faiss (optional dependency): ``IndexFlatL2``, on GPU only when ``faiss.get_num_gpus() > 0``.

Then a near-tie guard (docs/performance.md, technique 4): float32 may order a near-tie at a
boundary differently from exact arithmetic, so every row whose key gap at a boundary is below
``tie_tolerance`` is re-ranked with float64 distances ``sum((x_i - x_j)^2)`` (exact duplicates tie
exactly and fall back to index order). Optionally, candidates are first proposed by a low-precision
(bf16 / fp16) product, rescored exactly in float32 and certified by a per-row error bound; rows
that fail the certificate are recomputed exactly (docs/performance.md, technique 3). Both options
keep the neighbour sets equal to the float64 ones.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, get_args

import numpy as np
import torch

from gur_lightning.clustering._validation import as_feature_tensor, check_positive_int
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

KnnBackend = Literal["auto", "torch", "faiss"]
KernelChoice = Literal["auto", "numba", "numpy"]
KERNEL_CHOICES: tuple[str, ...] = get_args(KernelChoice)

DEFAULT_BLOCK_SIZE = 2048
"""Rows per block of the CPU Gram matrix: a 2048 x 2048 float32 block is 16 MB."""
DEFAULT_TIE_TOLERANCE = 1e-5
"""Key gap (squared-distance units) under which a boundary is re-ranked in float64.

float32 Gram entries of d = 2048 unit vectors carry errors of order 1e-7 to 1e-6, so 1e-5 leaves
an order of magnitude of margin (docs/performance.md, technique 4: ~1 % of rows are re-ranked)."""
DEFAULT_POOL_EXTRA = 8
"""Candidates kept beyond k + 1, so that a re-ranked row rarely needs a full float64 recompute."""
DEFAULT_PROPOSAL_MARGIN = 24
"""Extra low-precision candidates per row before exact rescoring (docs/performance.md: k1 + 20)."""
GPU_CHUNK_ELEMENTS = 1 << 27
"""Largest (rows x N) similarity chunk on GPU: 512 MB of float32."""
RESCORE_CHUNK_ROWS = 16
"""Rows per chunk when pool entries are rescored (a (16, P, D) gather: a few MB, cache-sized)."""
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
INT8_MAX_DIM = (2**31 - 1) // (127 * 127)
"""Largest dimension whose int8 products cannot overflow the int32 accumulator."""
MIN_DIAGONAL_SPLIT = 256
"""Smallest half of a diagonal block split into a triangle: below it one product is cheaper
(leaves of 128 rows gain nothing more on a 2048-row block, and smaller products run slower)."""
FLOAT64_SHORTLIST_SLACK = 1e-9
"""Slack of a full float64 row recompute: candidates within it of the cut are re-ranked exactly."""


@dataclass(frozen=True)
class KnnResult:
    """Exact neighbour lists of every point, the point itself included.

    Attributes:
        indices: (N, k) int64, by ascending squared Euclidean distance; the sets of the first
            ``b`` columns are exact for every requested boundary ``b`` (ties: lower index first).
        dots: (N, k) float32 inner products ``x_i . x_j`` of the listed pairs.
        rows_rescored: Rows whose near-tied boundaries were re-ranked in float64.
        rows_recomputed: Rows recomputed against all points (failed proposal certificate, or a
            float64 re-ranking that reached past the candidate pool).
        backend: ``"torch-cpu"``, ``"torch-cuda"``, ``"faiss-cpu"`` or ``"faiss-gpu"``.
        seconds: Wall time of the search.
    """

    indices: np.ndarray
    dots: np.ndarray
    rows_rescored: int
    rows_recomputed: int
    backend: str
    seconds: float


@contextlib.contextmanager
def ieee_float32_matmul() -> Iterator[None]:
    """Force true float32 matrix products (no TF32 / bf16 shortcuts) inside the block.

    Lightning users often enable TF32 for training; its 10-bit mantissa would reorder neighbours.
    Uses the per-backend ``fp32_precision`` API (mixing it with the legacy global setter raises in
    recent torch) and restores the caller's settings.
    """
    backends = [
        b
        for b in (
            getattr(torch.backends.cuda, "matmul", None),
            getattr(getattr(torch.backends, "mkldnn", None), "matmul", None),
        )
        if b is not None and hasattr(b, "fp32_precision")
    ]
    saved = [b.fp32_precision for b in backends]
    cuda_reduced = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        # Proposal products in bf16 must accumulate in float32 for the error bound to hold.
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        yield
    finally:
        for b, value in zip(backends, saved, strict=True):
            b.fp32_precision = value
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = cuda_reduced


def faiss_available() -> bool:
    """Return whether the optional ``faiss`` package is installed, without importing it.

    Importing faiss is slow and logs its loader's lines, so it is only imported when used.
    """
    if "faiss" in sys.modules:
        return sys.modules["faiss"] is not None
    try:
        return importlib.util.find_spec("faiss") is not None
    except (ImportError, ValueError):
        return False


def _faiss_may_have_gpus() -> bool:
    """Whether faiss is already imported or installed as a GPU build (a cheap check).

    Only then is it worth importing faiss to count its GPUs; a CPU-only faiss never makes
    ``"auto"`` choose it.
    """
    if sys.modules.get("faiss") is not None:
        return True
    try:
        dists = importlib.metadata.packages_distributions().get("faiss", [])
    except Exception:  # broken metadata of an unrelated package: assume no GPU build
        return False
    return any("gpu" in name.lower() for name in dists)


def _faiss_num_gpus() -> int:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_knn_device(features: torch.Tensor, device: Any | None) -> torch.device:
    """Return the device the torch kNN runs on.

    Args:
        features: The (N, D) feature tensor.
        device: ``None`` (the features' own device), or a device / string such as ``"cuda"``.

    Returns:
        A ``torch.device`` of type cpu or cuda.

    Raises:
        ValueError: If the device is unsupported or CUDA is requested but unavailable.
    """
    dev = features.device if device is None else torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"knn device must be 'cpu' or 'cuda', got '{dev}'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"knn device '{dev}' requested but torch.cuda.is_available() is False")
    return dev


def resolve_knn_backend(backend: str, run_device: torch.device) -> str:
    """Resolve ``"auto"`` and validate an explicit backend name.

    ``"auto"`` is the torch engine, except on a machine whose faiss has GPUs while the torch
    features live on the CPU, where faiss-GPU is used (faiss is only imported to count its GPUs
    when a GPU build is installed or it is already imported; ``"torch"`` never imports it). All
    engines give the same neighbour sets (the near-tie guard runs on each), so the choice only
    affects speed.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        run_device: The device resolved by :func:`resolve_knn_device`.

    Returns:
        ``"torch"`` or ``"faiss"``.

    Raises:
        ValueError: For an unknown name, or ``"faiss"`` when faiss is not installed.
    """
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"knn_backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise ValueError(
            "knn_backend='faiss' but faiss is not installed; pip install faiss-cpu (or "
            "faiss-gpu), or use knn_backend='torch'"
        )
    if backend == "auto":
        if run_device.type == "cpu" and _faiss_may_have_gpus() and _faiss_num_gpus() > 0:
            return "faiss"
        return "torch"
    return backend


@functools.cache
def _load_compiled_kernels() -> ModuleType | None:
    """Import the numba kernels once; ``None`` (logged once) when they cannot be built.

    The import compiles them, or loads them from numba's on-disk cache.
    """
    try:
        from gur_lightning.clustering import _kernels
    except Exception as err:  # numba missing, or too old / too new for this numpy
        log.warning(
            "numba kernels unavailable (%s: %s); the pseudo-label engine uses its numpy paths "
            "(same labels, about 0.3 s slower per 10,000 points)",
            type(err).__name__,
            err,
        )
        return None
    return _kernels


def resolve_kernels(engine: str) -> ModuleType | None:
    """Resolve the pseudo-label engine's kernels: the numba module, or ``None`` for numpy.

    They run the CPU kNN's block scan, the k-reciprocal expansion and the Jaccard accumulation;
    either way the neighbours, sets and distances are the same.

    Args:
        engine: ``"auto"`` (numba when it can be imported, else numpy), ``"numba"`` or
            ``"numpy"``.

    Returns:
        The compiled kernels module, or ``None`` for the numpy paths.

    Raises:
        ValueError: For an unknown name, or ``"numba"`` when the kernels cannot be built.
    """
    if engine not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be 'auto', 'numba' or 'numpy', got {engine!r}")
    if engine == "numpy":
        return None
    kernels = _load_compiled_kernels()
    if kernels is None and engine == "numba":
        raise ValueError(
            "kernels='numba' but the numba kernels could not be built (see the warning "
            "above); pip install numba, or use kernels='numpy'"
        )
    return kernels


class _Pool:
    """Per-row best-``depth`` candidates by float32 key, kept sorted (descending key).

    numpy arrays: on small ragged arrays numpy's sorts and scatters are several times faster
    than torch's CPU kernels, and the pool is merged once per block.
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
    lower threshold only lets a few more through) and merged once :data:`FLUSH_ENTRIES` pile up.
    """

    def __init__(self, pool: _Pool, flush_entries: int) -> None:
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


class _ProposalProduct:
    """Gram blocks ``X_I X_J^T``: exact float32, or a cheaper proposal with an error bound.

    * ``None``: float32 (exact up to float32 rounding; the near-tie guard covers that).
    * ``torch.bfloat16`` / ``torch.float16``: inputs rounded to the format (unit roundoff u).
    * ``torch.int8``: per-row symmetric quantisation ``x ~ s_i q_i`` (``s_i = max|x_i| / 127``)
      and an exact int32 product (``torch._int_mm``, VNNI: ~3x float32 on AVX-512 CPUs).

    :meth:`outsider_bound` bounds, per row ``i``, ``|key_ij - proposed key_ij|`` over all ``j``.
    """

    def __init__(self, x: torch.Tensor, proposal: torch.dtype | None) -> None:
        self.proposal = proposal
        self.x = x
        if proposal is None:
            self.xs = x
        elif proposal == torch.int8:
            if not hasattr(torch, "_int_mm"):
                raise ValueError("proposal_dtype=torch.int8 needs torch._int_mm (torch >= 2.1)")
            if x.shape[1] > INT8_MAX_DIM:
                raise ValueError(
                    f"int8 proposals accumulate in int32: dimension {x.shape[1]} exceeds "
                    f"{INT8_MAX_DIM}"
                )
            amax = x.abs().amax(dim=1)
            self.scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
            self.xs = torch.round(x / self.scale[:, None]).clamp_(-127, 127).to(torch.int8)
        else:
            self.xs = x.to(proposal)

    def block(self, s: int, e: int, t: int, u: int, buf: torch.Tensor) -> np.ndarray:
        """(e - s, u - t) float32 numpy block of (proposed) inner products."""
        if self.proposal is None:
            out = buf[: e - s, : u - t]
            torch.mm(self.xs[s:e], self.xs[t:u].t(), out=out)
            return out.numpy()
        if self.proposal == torch.int8:
            g = torch._int_mm(self.xs[s:e], self.xs[t:u].t()).float()
            g *= self.scale[s:e, None]
            g *= self.scale[None, t:u]
            return g.numpy()
        return torch.mm(self.xs[s:e], self.xs[t:u].t()).float().numpy()

    def diagonal(self, s: int, e: int, buf: torch.Tensor) -> np.ndarray:
        """(e - s, e - s) float32 numpy block ``X_I X_I^T``, multiplied as a triangle.

        The block is symmetric: its top-right quarter is multiplied, the two diagonal quarters
        are split the same way in turn (down to halves of :data:`MIN_DIAGONAL_SPLIT` rows), and
        every bottom-left quarter is the transpose of its top-right one. A 2048-row block then
        costs 9/16 of a full product instead of 1 (3/4 with one split); the diagonal blocks are
        1 / (blocks + 1) of a symmetric Gram matrix's products. The block comes out exactly
        symmetric.
        """
        size = e - s
        if self.proposal is not None or size < 2 * MIN_DIAGONAL_SPLIT:
            return self.block(s, e, s, e, buf)
        out = buf[:size, :size]
        self._triangle(s, e, out)
        return out.numpy()

    def _triangle(self, s: int, e: int, out: torch.Tensor) -> None:
        """Fill ``out`` (a (e - s, e - s) view) with ``X_I X_I^T``, halving recursively."""
        size = e - s
        if size < 2 * MIN_DIAGONAL_SPLIT:
            torch.mm(self.xs[s:e], self.xs[s:e].t(), out=out)
            return
        half = size // 2
        torch.mm(self.xs[s : s + half], self.xs[s + half : e].t(), out=out[:half, half:])
        self._triangle(s, s + half, out[:half, :half])
        self._triangle(s + half, e, out[half:, half:])
        out[half:, :half] = out[:half, half:].t()

    def outsider_bound(self, norms: np.ndarray) -> np.ndarray:
        """(N,) float64 bound on the key error ``2 |g_ij - p_ij|`` plus key rounding, any j."""
        dim = self.x.shape[1]
        u32 = float(np.finfo(np.float32).eps) / 2.0
        length = np.sqrt(np.maximum(norms, 0.0)).astype(np.float64)
        scale = length * length.max()
        rounding = 4.0 * u32 * (scale + norms.max())
        if self.proposal == torch.int8:
            # g - p = δ_i.x_j + x~_i.δ_j with δ = x - s q: Cauchy-Schwarz on each term; the
            # int32 -> float32 conversion and two scalings add 4 u32 |x~_i| |x~_j|.
            resid = np.empty(self.x.shape[0])
            q_len = np.empty(self.x.shape[0])
            for a in range(0, self.x.shape[0], RESCORE_CHUNK_ROWS * 256):
                b = a + RESCORE_CHUNK_ROWS * 256
                approx = self.xs[a:b].float() * self.scale[a:b, None]
                resid[a:b] = torch.linalg.vector_norm(self.x[a:b] - approx, dim=1).numpy()
                q_len[a:b] = torch.linalg.vector_norm(approx, dim=1).numpy()
            err = resid * length.max() + q_len * resid.max() + 4.0 * u32 * q_len * q_len.max()
            return 2.0 * err + rounding
        assert self.proposal is not None  # a float proposal dtype here (int8 returned above)
        u = torch.finfo(self.proposal).eps / 2.0
        # inputs rounded (2u + u^2), float32 accumulation (D u32), output rounded (u).
        return 2.0 * scale * (3.0 * u + u * u + dim * u32) + rounding


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, restoring the caller's count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _is_turn(state: dict[str, int], index: int) -> bool:
    """Whether the blocks before ``index`` have been scanned (the condition of a wait)."""
    return state["scanned"] == index


def _blocked_cpu_pool(
    x: torch.Tensor,
    norms: np.ndarray,
    depth: int,
    block: int,
    proposal: torch.dtype | None,
    kernels: ModuleType | None = None,
) -> _Pool:
    """Best-``depth`` pool per row from a symmetric blocked Gram matrix (CPU).

    Every block pair (I, J), I <= J, is multiplied once; the diagonal blocks seed the running
    thresholds, then every block is scanned against them, always one at a time and in the same
    order, so the result does not depend on the scheduling below. The scan is the compiled
    :mod:`~gur_lightning.clustering._kernels` when ``kernels`` is given, else the numpy
    :func:`_scan_block`; both give the same pool.

    Scheduling: the scan is single-threaded (a tenth of the work at N = 10,000 compiled, a
    third in numpy). With T > 1 torch threads, T workers each multiply their next block on one
    thread and then scan it in turn, so that one worker's scan runs beside the others'
    products instead of leaving T - 1 cores idle (one T-thread product at a time cannot
    overlap the scan: its threads wait for each other whenever the scan takes a core from one
    of them).
    """
    n = x.shape[0]
    pool = _Pool(n, depth)
    product = _ProposalProduct(x, proposal)
    starts = list(range(0, n, block))
    side = min(block, n)
    # Diagonal blocks first: seeding overwrites a row's pool, so it must precede the rest.
    pairs = [(s, s) for s in starts]
    pairs += [(s, t) for bi, s in enumerate(starts) for t in starts[bi + 1 :]]
    scan, finish = _block_scanner(pool, norms, side, kernels)

    def multiply(i: int, buf: torch.Tensor) -> np.ndarray:
        s, t = pairs[i]
        e, u = min(s + block, n), min(t + block, n)
        return product.diagonal(s, e, buf) if s == t else product.block(s, e, t, u, buf)

    workers = min(torch.get_num_threads(), len(pairs))
    if workers <= 1:
        buf = torch.empty((side, side), dtype=torch.float32)
        for i, (s, t) in enumerate(pairs):
            scan(multiply(i, buf), s, t)
        finish()
        return pool

    claim = threading.Lock()
    turn = threading.Condition()
    state = {"next": 0, "scanned": 0}

    def work() -> None:
        buf = torch.empty((side, side), dtype=torch.float32)
        while True:
            with claim:
                i = state["next"]
                state["next"] += 1
            if i >= len(pairs):
                return
            g = multiply(i, buf)
            with turn:
                turn.wait_for(functools.partial(_is_turn, state, i))
                try:
                    scan(g, *pairs[i])
                finally:
                    # Even a failed scan passes the turn on, so no worker waits forever.
                    state["scanned"] += 1
                    turn.notify_all()

    with _torch_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="knn") as helpers:
        for future in [helpers.submit(work) for _ in range(workers)]:
            future.result()
    finish()
    return pool


def _block_scanner(
    pool: _Pool, norms: np.ndarray, side: int, kernels: ModuleType | None
) -> tuple[Callable[[np.ndarray, int, int], None], Callable[[], None]]:
    """Return ``(scan(g, s, t), finish())`` that feed Gram blocks into ``pool``.

    ``scan`` takes a (B, C) block ``X[s:s+B] X[t:t+C]^T`` (the whole block when ``s == t``);
    ``finish`` completes the pool once every block has been scanned.
    """
    if kernels is not None:
        norms32 = np.ascontiguousarray(norms, dtype=np.float32)

        def compiled_scan(g: np.ndarray, s: int, t: int) -> None:
            if s == t:
                kernels.seed_rows(g, s, norms32, pool.key, pool.idx, pool.dot)
            else:
                kernels.scan_block(g, s, t, norms32, pool.key, pool.idx, pool.dot)

        return compiled_scan, lambda: None
    masks = (np.empty((side, side), dtype=bool), np.empty((side, side), dtype=bool))
    pending = _PendingCandidates(
        pool, max(FLUSH_ENTRIES_MIN, FLUSH_ENTRIES_PER_ROW * pool.key.shape[0])
    )

    def numpy_scan(g: np.ndarray, s: int, t: int) -> None:
        _scan_block(pool, pending, g, s, t, norms, masks)

    return numpy_scan, pending.flush


def _scan_block(
    pool: _Pool,
    pending: _PendingCandidates,
    g: np.ndarray,
    s: int,
    t: int,
    norms: np.ndarray,
    masks: tuple[np.ndarray, np.ndarray],
) -> None:
    """Collect the candidates of one Gram block ``g = X[s:s+B] X[t:t+C]^T``.

    A diagonal block (``s == t``) seeds its rows' pools directly; an off-diagonal block adds
    candidates for its rows and, transposed, for its columns to ``pending``.

    ``2 g_ij - |x_j|^2 > theta_i`` implies ``g_ij > (theta_i + min_J |x_j|^2) / 2``, a scalar per
    row (and likewise per column for the transposed use of an off-diagonal block), so the scan
    is two comparisons on the raw product; exact keys are computed only for the survivors.
    """
    rows_b, cols_b = g.shape
    e, u = s + rows_b, t + cols_b
    mask = masks[0][:rows_b, :cols_b]
    if t == s:
        # Seed the rows' thresholds with their exact depth-th best key inside the diagonal
        # block: a value-only partition costs a fraction of a top-k or of merging a weak seed.
        key = 2.0 * g - norms[s:e][None, :]
        kk = min(pool.depth, cols_b)
        theta = np.partition(key, cols_b - kk, axis=1)[:, cols_b - kk]
        np.greater_equal(key, theta[:, None], out=mask)
        counts = mask.sum(axis=1)
        if (counts == kk).all():
            # The usual case, no tie at the kk-th key: every row holds exactly kk candidates
            # and its pool is still empty, so they are written directly, sorted by key (a
            # stable sort keeps the lower index first on ties, as the merge would).
            cols = np.flatnonzero(mask).reshape(rows_b, kk) % cols_b
            cand = np.take_along_axis(key, cols, axis=1)
            order = np.argsort(-cand, axis=1, kind="stable")
            cols = np.take_along_axis(cols, order, axis=1)
            pool.key[s:e, :kk] = np.take_along_axis(cand, order, axis=1)
            pool.idx[s:e, :kk] = cols + t
            pool.dot[s:e, :kk] = np.take_along_axis(g, cols, axis=1)
            return
        flat = np.flatnonzero(mask)
        r, c = np.divmod(flat, cols_b)
        pool.merge(r + s, c + t, key.reshape(-1)[flat], g.reshape(-1)[flat])
        return
    lim_rows = (pool.theta[s:e] + norms[t:u].min()) * 0.5
    lim_cols = (pool.theta[t:u] + norms[s:e].min()) * 0.5
    np.greater(g, lim_rows[:, None], out=mask)
    tmp = masks[1][:rows_b, :cols_b]
    np.greater(g, lim_cols[None, :], out=tmp)
    mask |= tmp
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return
    r, c = np.divmod(flat, cols_b)
    gv = g.reshape(-1)[flat]
    key_row = 2.0 * gv - norms[t + c]
    sel_row = key_row > pool.theta[s + r]
    key_col = 2.0 * gv - norms[s + r]
    sel_col = key_col > pool.theta[t + c]
    pending.add(r[sel_row] + s, c[sel_row] + t, key_row[sel_row], gv[sel_row])
    pending.add(c[sel_col] + t, r[sel_col] + s, key_col[sel_col], gv[sel_col])


def _chunked_gpu_pool(x: torch.Tensor, depth: int, proposal: torch.dtype | None) -> _Pool:
    """Best-``depth`` pool per row from row chunks against all points and ``topk`` (GPU)."""
    n = x.shape[0]
    pool = _Pool(n, depth)
    norms = (x * x).sum(1)
    xs = x if proposal is None else x.to(proposal)
    chunk = max(1, min(n, GPU_CHUNK_ELEMENTS // n))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        g = torch.mm(xs[s:e], xs.t()).float()
        top_key, top_pos = torch.topk(2.0 * g - norms[None, :], depth, dim=1)
        pool.key[s:e] = top_key.cpu().numpy()
        pool.idx[s:e] = top_pos.cpu().numpy()
        pool.dot[s:e] = g.gather(1, top_pos).cpu().numpy()
    return pool


def _faiss_pool(x: np.ndarray, depth: int) -> tuple[_Pool, str]:
    """Best-``depth`` pool per row from faiss ``IndexFlatL2`` (GPU only if faiss has GPUs)."""
    import faiss

    n, d = x.shape
    name = "faiss-cpu"
    index = faiss.IndexFlatL2(d)
    if _faiss_num_gpus() > 0:
        # Only reached when faiss reports GPUs: calling GPU functions otherwise kills the process.
        resources = faiss.StandardGpuResources()  # must outlive the search below
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        name = "faiss-gpu"
    index.add(x)
    dist, idx = index.search(x, depth)
    pool = _Pool(n, depth)
    idx = np.asarray(idx, dtype=np.int64)
    valid = idx >= 0
    pool.idx = np.where(valid, idx, -1)
    # faiss returns squared distances; the negated distance orders and gaps like the key does.
    pool.key = np.where(valid, -np.asarray(dist, dtype=np.float32), -np.inf).astype(np.float32)
    pool.dot = _exact_dots(x, np.arange(n), pool.idx)
    return pool, name


def pair_dots(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 inner products ``x[rows[p]] . x[cols[p]]`` for arbitrary pairs; (P,).

    Uses ``torch.sparse.sampled_addmm`` on a CSR pattern of the pairs: it reads each pair's two
    rows in place, where gathering them into temporaries first (``einsum`` on ``x[rows]``,
    ``x[cols]``) moves 16 KB per pair at d = 2048 and is about 10 times slower.
    """
    n = x.shape[0]
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=np.float32)
    order = np.lexsort((cols, rows))
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
        pattern = torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(np.ascontiguousarray(cols[order])),
            torch.zeros(rows.size, dtype=torch.float32),
            size=(n, n),
            check_invariants=False,
        )
        values = torch.sparse.sampled_addmm(pattern, xt, xt.t(), beta=0.0).values().numpy()
    out = np.empty(rows.size, dtype=np.float32)
    out[order] = values
    return out


def _exact_dots(x: np.ndarray, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float32 inner products ``x[rows[a]] . x[idx[a, b]]`` (``idx`` -1 gives 0); (R, P)."""
    valid = idx >= 0
    out = np.zeros(idx.shape, dtype=np.float32)
    out[valid] = pair_dots(x, np.broadcast_to(rows[:, None], idx.shape)[valid], idx[valid])
    return out


def _certify_proposals(
    x: torch.Tensor, norms: np.ndarray, pool: _Pool, depth: int, proposal: torch.dtype
) -> tuple[_Pool, int]:
    """Rescore a low-precision pool exactly in float32, certify it and trim it to ``depth``.

    A point outside the pool has proposal key at most the pool's last proposal key ``p_last``;
    its exact key is at most ``p_last + bound_i``, where ``bound_i`` bounds the proposal error of
    row ``i`` (:meth:`_ProposalProduct.outsider_bound`). If that stays below the exact
    ``depth``-th key, no outsider can enter the exact top ``depth``; otherwise the row is
    recomputed exactly in float32.
    """
    xn = x.numpy()
    n = xn.shape[0]
    bound = _ProposalProduct(x, proposal).outsider_bound(norms)
    p_last = pool.key[:, -1].astype(np.float64)
    dots = _exact_dots(xn, np.arange(n), pool.idx)
    keys = np.where(pool.idx >= 0, 2.0 * dots - norms[np.maximum(pool.idx, 0)], -np.inf)
    order = np.argsort(-keys, axis=1)[:, :depth]
    trimmed = _Pool(n, depth)
    trimmed.key = np.take_along_axis(keys, order, axis=1).astype(np.float32)
    trimmed.idx = np.take_along_axis(pool.idx, order, axis=1)
    trimmed.dot = np.take_along_axis(dots, order, axis=1)
    # A pool that already holds every point has no outsider to fear.
    full = (pool.idx[:, -1] < 0) | (pool.depth >= n)
    bad = np.flatnonzero(~full & (p_last + bound >= trimmed.key[:, -1]))
    xt = torch.from_numpy(xn)
    nt = torch.from_numpy(norms)
    for s in range(0, bad.size, RESCORE_CHUNK_ROWS):
        rows = bad[s : s + RESCORE_CHUNK_ROWS]
        g = torch.mm(xt[torch.from_numpy(rows)], xt.t())
        key, pos = torch.topk(2.0 * g - nt[None, :], depth, dim=1)
        trimmed.key[rows] = key.numpy()
        trimmed.idx[rows] = pos.numpy()
        trimmed.dot[rows] = g.gather(1, pos).numpy()
    return trimmed, int(bad.size)


def _float64_rerank(x: np.ndarray, rows: np.ndarray, cand: np.ndarray) -> tuple:
    """Sort candidates ``cand`` (R, P; -1 = none) of ``rows`` by float64 distance, then index.

    Distances are ``sum((x_i - x_j)^2)`` in float64, so exact duplicates tie exactly.

    Returns:
        (sorted indices (R, P), sorted float64 squared distances (R, P), +inf for none).
    """
    diff = x[rows].astype(np.float64)[:, None, :] - x[np.maximum(cand, 0)].astype(np.float64)
    d64 = np.einsum("rpd,rpd->rp", diff, diff)
    d64 = np.where(cand >= 0, d64, np.inf)
    idx_key = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((idx_key, d64), axis=1)
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(d64, order, axis=1)


def _settle_near_ties(
    x: np.ndarray,
    norms: np.ndarray,
    pool: _Pool,
    boundaries: Sequence[int],
    tolerance: float,
) -> tuple[int, int]:
    """Re-rank in float64 every row whose key gap at a boundary is below ``tolerance``.

    Modifies ``pool.idx`` / ``pool.dot`` in place (their keys are then stale). A row whose float64
    order could involve a point outside the pool is recomputed against all points in float64.

    Returns:
        (rows re-ranked, rows recomputed against all points).
    """
    n, depth = pool.idx.shape
    # float32 key errors scale with |x_i| |x_j|: the tolerance is absolute for unit vectors and
    # grows with the norms otherwise (large-norm features would defeat a fixed threshold).
    lengths = np.sqrt(np.maximum(norms, 0.0)).astype(np.float64)
    tol = tolerance * np.maximum(1.0, lengths * lengths.max())
    flagged = np.zeros(n, dtype=bool)
    for b in boundaries:
        if b < depth:
            gap = pool.key[:, b - 1].astype(np.float64) - pool.key[:, b]
            flagged |= (gap < tol) & (pool.idx[:, b] >= 0)
    rows_all = np.flatnonzero(flagged)
    kmax = max(boundaries)
    redo: list[np.ndarray] = []
    for s in range(0, rows_all.size, RESCORE_CHUNK_ROWS):
        rows = rows_all[s : s + RESCORE_CHUNK_ROWS]
        new_idx, d_sorted = _float64_rerank(x, rows, pool.idx[rows])
        # An outsider has float32 key <= the pool's last key, hence a true squared distance of
        # at least |x_i|^2 - last_key - tolerance: it cannot displace a closer kept neighbour.
        outsider = norms[rows].astype(np.float64) - pool.key[rows, -1] - tol[rows]
        if depth < n:
            redo.append(rows[(pool.idx[rows, -1] >= 0) & ~(d_sorted[:, kmax - 1] < outsider)])
        pool.idx[rows] = new_idx
        pool.dot[rows] = _exact_dots(x, rows, new_idx)
    redo_rows = np.concatenate(redo) if redo else np.zeros(0, dtype=np.int64)
    if redo_rows.size:
        x64 = x.astype(np.float64)
        norms64 = np.einsum("nd,nd->n", x64, x64)
    for i in redo_rows.tolist():
        d_norm = norms64 + norms64[i] - 2.0 * (x64 @ x64[i])
        cut = np.partition(d_norm, depth - 1)[depth - 1]
        cand = np.flatnonzero(d_norm <= cut + FLOAT64_SHORTLIST_SLACK)
        new_idx, _ = _float64_rerank(x, np.array([i]), cand[None, :])
        pool.idx[i] = new_idx[0, :depth]
        pool.dot[i] = _exact_dots(x, np.array([i]), pool.idx[i : i + 1])[0]
    return int(rows_all.size), int(redo_rows.size)


def exact_knn(
    features: Any,
    k: int,
    *,
    boundaries: Sequence[int] | None = None,
    backend: KnnBackend = "auto",
    device: Any | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    pool_extra: int = DEFAULT_POOL_EXTRA,
    proposal_dtype: torch.dtype | None = None,
    proposal_margin: int = DEFAULT_PROPOSAL_MARGIN,
    kernels: KernelChoice = "auto",
) -> KnnResult:
    """The ``k`` nearest neighbours of every point by squared Euclidean distance, self included.

    Implements the kNN of docs/method.md §7.2 step 1 (the reference's faiss ``IndexFlatL2``
    search), made exact at the boundaries that matter (see the module docstring).

    Args:
        features: (N, D) torch tensor (CPU or CUDA) or numpy array; need not be unit-norm.
        k: Neighbours per point, 1 <= k <= N.
        boundaries: Prefix sizes whose neighbour *sets* must be exact (default ``(k,)``; ``k`` is
            always included). The Jaccard distance passes (k2, round(k1/2) + 1, k1).
        backend: ``"auto"``, ``"torch"`` or ``"faiss"`` (see :func:`resolve_knn_backend`).
        device: Device of the torch engine (default: the features' device).
        block_size: Rows per block of the CPU engine.
        tie_tolerance: Key gap below which a boundary is re-ranked in float64; 0 disables the
            guard (raw float32 order, like the reference's faiss search).
        pool_extra: Candidates kept beyond ``k + 1`` for the float64 re-ranking.
        proposal_dtype: ``torch.bfloat16`` / ``torch.float16`` (fast on AMX CPUs and GPUs) or
            ``torch.int8`` (CPU, VNNI) to propose candidates with a cheaper product, then rescore
            them exactly and certify them (rows that fail are recomputed exactly). ``None``
            (default) computes the product in float32.
        proposal_margin: Extra proposed candidates per row before certification.
        kernels: How the CPU engine scans its Gram blocks: ``"numba"`` (compiled kernels),
            ``"numpy"``, or ``"auto"`` (numba when installed). Both give the same neighbours.

    Returns:
        A :class:`KnnResult` with (N, k) indices and dots.

    Raises:
        ValueError: On invalid features or options (see :func:`as_feature_tensor`).
    """
    start = time.perf_counter()
    x_in = as_feature_tensor(features)
    n = x_in.shape[0]
    k = check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k={k} neighbours requested but there are only N={n} points")
    bounds = sorted({int(b) for b in (boundaries or ())} | {k})
    if bounds[0] < 1 or bounds[-1] > k:
        raise ValueError(f"boundaries must lie in [1, k={k}], got {list(boundaries or ())}")
    block_size = check_positive_int(block_size, "block_size")
    pool_extra = check_positive_int(pool_extra, "pool_extra", minimum=0)
    if not tie_tolerance >= 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    if proposal_dtype not in (None, torch.bfloat16, torch.float16, torch.int8):
        raise ValueError(
            f"proposal_dtype must be None, torch.bfloat16, torch.float16 or torch.int8, got "
            f"{proposal_dtype}"
        )
    run_device = resolve_knn_device(x_in, device)
    engine = resolve_knn_backend(backend, run_device)
    compiled = resolve_kernels(kernels)
    depth = min(n, k + 1 + pool_extra)
    x = x_in.cpu()
    xn = x.numpy()
    norms = np.einsum("nd,nd->n", xn, xn)
    rows_recomputed = 0
    with ieee_float32_matmul():
        if engine == "faiss":
            if proposal_dtype is not None:
                raise ValueError("proposal_dtype applies to the torch engine, not to faiss")
            pool, name = _faiss_pool(xn, depth)
        else:
            prop_depth = depth if proposal_dtype is None else min(n, depth + proposal_margin)
            if run_device.type == "cuda":
                if proposal_dtype == torch.int8:
                    raise ValueError("int8 proposals are implemented for the CPU engine only")
                pool = _chunked_gpu_pool(x_in.to(run_device), prop_depth, proposal_dtype)
                name = "torch-cuda"
            else:
                pool = _blocked_cpu_pool(
                    x, norms, prop_depth, block_size, proposal_dtype, compiled
                )
                name = "torch-cpu"
            if proposal_dtype is not None:
                pool, rows_recomputed = _certify_proposals(x, norms, pool, depth, proposal_dtype)
        rescored, recomputed = (
            _settle_near_ties(xn, norms, pool, bounds, tie_tolerance)
            if tie_tolerance > 0
            else (0, 0)
        )
    seconds = time.perf_counter() - start
    log.debug(
        "exact_knn: N=%d k=%d %s %.2fs, %d rows re-ranked in float64, %d recomputed",
        n,
        k,
        name,
        seconds,
        rescored,
        rows_recomputed + recomputed,
    )
    return KnnResult(
        indices=np.ascontiguousarray(pool.idx[:, :k]),
        dots=np.ascontiguousarray(pool.dot[:, :k]),
        rows_rescored=rescored,
        rows_recomputed=rows_recomputed + recomputed,
        backend=name,
        seconds=seconds,
    )
