"""Inner products of the kNN: exact float32 Gram blocks, certified cheaper proposals, pairs.

Also the matmul mode every engine runs under (true float32, no TF32), so that the products match
float32 arithmetic (docs/performance.md, technique 3 for the proposals).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch

RESCORE_CHUNK_ROWS = 16
"""Rows per chunk when pool entries are rescored (a (16, P, D) gather: a few MB, cache-sized)."""
INT8_MAX_DIM = (2**31 - 1) // (127 * 127)
"""Largest dimension whose int8 products cannot overflow the int32 accumulator."""
MIN_DIAGONAL_SPLIT = 256
"""Smallest half of a diagonal block split into a triangle: below it one product is cheaper
(leaves of 128 rows gain nothing more on a 2048-row block, and smaller products run slower)."""


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


class ProposalProduct:
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
