"""Straightforward loop-by-loop port of the reference k-reciprocal Jaccard distance.

Follows docs/method.md §7.2 step by step, in the shape of cluster-contrast's
``compute_jaccard_distance`` (dense N x N float32 matrices, Python loops, an inverted index), so
that the fast sparse
implementation can be checked against independent code. The only deliberate difference is the
kNN: exact float64 distances ``sum((x_i - x_j)^2)`` with ties broken by the lower index (the
reference's faiss float32 search is ambiguous on exact ties such as duplicate features).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def reference_knn(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) neighbour lists incl. self by float64 squared distance, ties by index."""
    x64 = x.astype(np.float64)
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for i in range(x.shape[0]):
        d = ((x64 - x64[i]) ** 2).sum(1)
        out[i] = np.argsort(d, kind="stable")[:k]
    return out


def k_reciprocal_neigh(initial_rank: np.ndarray, i: int, k1: int) -> np.ndarray:
    forward = initial_rank[i, : k1 + 1]
    backward = initial_rank[forward, : k1 + 1]
    fi = np.where(backward == i)[0]
    return forward[fi]


def reference_jaccard(x: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense (N, N) float32 k-reciprocal Jaccard distance, the reference's way."""
    n = x.shape[0]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    initial_rank = reference_knn(x, k1)
    nn_k1 = [k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
    nn_k1_half = [k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2.0))) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        k_reciprocal_index = nn_k1[i]
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:
            cand_index = nn_k1_half[candidate]
            if len(np.intersect1d(cand_index, k_reciprocal_index)) > 2 / 3 * len(cand_index):
                expansion = np.append(expansion, cand_index)
        expansion = np.unique(expansion)
        dist = 2 - 2 * torch.mm(xt[i].unsqueeze(0), xt[expansion].t())
        v[i, expansion] = F.softmax(-dist, dim=1).view(-1).numpy()
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(n)]
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros((1, n), dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        images = [inv_index[c] for c in nonzero]
        for j in range(len(nonzero)):
            temp_min[0, images[j]] = temp_min[0, images[j]] + np.minimum(
                v[i, nonzero[j]], v[images[j], nonzero[j]]
            )
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    jaccard[jaccard < 0] = 0.0
    return jaccard
