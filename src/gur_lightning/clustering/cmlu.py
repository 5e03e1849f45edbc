"""Cross-modality label unification, CMLU (docs/method.md §9), as the reference code implements it.

* :func:`propagate_labels` (§9.1): visible samples take the infrared cluster ids of their
  heterogeneous neighbourhood. ``W = softmax_row(cos(X_r, X_i) / T)`` with ``T = 1``, keep the top
  k per row, one step ``P = W Y_i`` with ``Y_i = onehot(l_i + 1)`` (column 0 is the infrared
  outlier class), ``l_r = argmax(P) - 1``. No iteration, no normalisation (§9.5, §17.9).
* :func:`smooth_labels` (§9.2): a majority vote over the k nearest visible neighbours (binary
  top-k incl. self, not symmetrised), the outlier class counting as a class; ties go to the lowest
  column (``torch.argmax``), so an outlier wins a tie.

Both work on row chunks, so the N_r x N_i (22k x 12k on SYSU) and N_r x N_r matrices are never
formed whole; they give the dense formula's result (the vote sums are accumulated in float64 /
integers, so chunking cannot change them beyond float32 rounding of the similarities).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gur_lightning.clustering._validation import (
    as_feature_tensor,
    as_label_array,
    check_positive_int,
)
from gur_lightning.clustering.options import DEFAULT_CMLU_TOPK

DEFAULT_PROPAGATION_TEMPERATURE = 1.0
"""Softmax temperature of the heterogeneous affinity (docs/method.md §9.1: none, i.e. 1)."""
CHUNK_ELEMENTS = 1 << 25
"""Largest (rows x columns) similarity chunk: 128 MB of float32."""


def _pair(feat_a: Any, feat_b: Any, name_a: str, name_b: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_feature_tensor(feat_a, name_a)
    b = as_feature_tensor(feat_b, name_b)
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} on {b.device}; use one device")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} has dimension {a.shape[1]} but {name_b} has {b.shape[1]}; they must match"
        )
    return a, b


def _chunk_rows(cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return check_positive_int(chunk_size, "chunk_size")
    return max(1, CHUNK_ELEMENTS // max(cols, 1))


def propagate_labels(
    feat_visible: Any,
    feat_infrared: Any,
    labels_infrared: Any,
    topk: int = DEFAULT_CMLU_TOPK,
    *,
    temperature: float = DEFAULT_PROPAGATION_TEMPERATURE,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Heterogeneous-affinity label propagation, infrared to visible (docs/method.md §9.1).

    Args:
        feat_visible: (N_r, D) visible features ``e`` (raw, not CAE; normalised here).
        feat_infrared: (N_i, D) infrared features on the same device.
        labels_infrared: (N_i,) infrared cluster ids, ``-1`` for outliers.
        topk: Infrared neighbours kept per visible sample (20 SYSU, 10 RegDB); reduced to N_i
            when larger.
        temperature: Softmax temperature of the affinity (1 in the reference).
        chunk_size: Visible rows per chunk (default: a 128 MB similarity chunk).

    Returns:
        (N_r,) int64 CPU tensor of infrared cluster ids; ``-1`` where the weighted
        neighbourhood is dominated by infrared outliers (or, unreachable in practice, where all
        weights underflow to 0).

    Raises:
        ValueError: On malformed features or labels, or non-positive ``topk`` / temperature.
    """
    xr, xi = _pair(feat_visible, feat_infrared, "feat_visible", "feat_infrared")
    labels = as_label_array(labels_infrared, "labels_infrared", length=xi.shape[0])
    topk = min(check_positive_int(topk, "topk"), xi.shape[0])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_cols = int(labels.max()) + 2 if labels.size else 1
    y = torch.as_tensor(labels + 1, device=xi.device)
    ur, ui = F.normalize(xr, dim=1), F.normalize(xi, dim=1)
    out = torch.empty(xr.shape[0], dtype=torch.int64)
    step = _chunk_rows(xi.shape[0], chunk_size)
    for s in range(0, xr.shape[0], step):
        e = min(s + step, xr.shape[0])
        w = torch.softmax((ur[s:e] @ ui.t()) / temperature, dim=1)
        vals, idx = torch.topk(w, topk, dim=1)
        votes = torch.zeros((e - s, num_cols), dtype=torch.float64, device=xi.device)
        votes.scatter_add_(1, y[idx], vals.double())
        # argmax of an all-zero row is column 0, the outlier class: label -1 as in the reference.
        out[s:e] = (torch.argmax(votes, dim=1) - 1).cpu()
    return out


def smooth_labels(
    feat_visible: Any,
    labels: Any,
    topk: int = DEFAULT_CMLU_TOPK,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Homogeneous structure smoothing: top-k majority vote among visible samples (§9.2).

    Args:
        feat_visible: (N_r, D) visible features (normalised here).
        labels: (N_r,) labels after :func:`propagate_labels`, ``-1`` for outliers.
        topk: Neighbours per vote, the sample itself included (20 SYSU, 10 RegDB); reduced to
            N_r when larger.
        chunk_size: Rows per chunk (default: a 128 MB similarity chunk).

    Returns:
        (N_r,) int64 CPU tensor: the most frequent label among each sample's top-k (the
        outlier class counts; ties go to the lowest label, ``-1`` first).

    Raises:
        ValueError: On malformed features or labels, or a non-positive ``topk``.
    """
    x = as_feature_tensor(feat_visible, "feat_visible")
    lab = as_label_array(labels, "labels", length=x.shape[0])
    topk = min(check_positive_int(topk, "topk"), x.shape[0])
    num_cols = int(lab.max()) + 2 if lab.size else 1
    y = torch.as_tensor(lab + 1, device=x.device)
    u = F.normalize(x, dim=1)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    step = _chunk_rows(x.shape[0], chunk_size)
    for s in range(0, x.shape[0], step):
        e = min(s + step, x.shape[0])
        _, idx = torch.topk(u[s:e] @ u.t(), topk, dim=1)
        counts = torch.zeros((e - s, num_cols), dtype=torch.int64, device=x.device)
        counts.scatter_add_(1, y[idx], torch.ones_like(idx))
        out[s:e] = (torch.argmax(counts, dim=1) - 1).cpu()
    return out


def cmlu(
    feat_visible: Any,
    feat_infrared: Any,
    labels_infrared: Any,
    *,
    topk: int = DEFAULT_CMLU_TOPK,
    smooth: bool = False,
    smooth_topk: int | None = None,
    temperature: float = DEFAULT_PROPAGATION_TEMPERATURE,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-modality label unification (docs/method.md §9): propagation, then optional smoothing.

    Args:
        feat_visible: (N_r, D) visible features ``e``.
        feat_infrared: (N_i, D) infrared features ``e``.
        labels_infrared: (N_i,) infrared cluster ids (``-1`` outliers).
        topk: Top-k of the propagation (``cmlu_topk``: 20 SYSU, 10 RegDB).
        smooth: Also run the homogeneous smoothing (SYSU from epoch 40, RegDB from 20).
        smooth_topk: Top-k of the smoothing (default: ``topk``, as the reference).
        temperature: Softmax temperature of the propagation (1).
        chunk_size: Rows per chunk.

    Returns:
        (N_r,) int64 CPU tensor of visible labels in the infrared label space.
    """
    labels = propagate_labels(
        feat_visible,
        feat_infrared,
        labels_infrared,
        topk,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    if smooth:
        labels = smooth_labels(
            feat_visible,
            labels,
            topk if smooth_topk is None else smooth_topk,
            chunk_size=chunk_size,
        )
    return labels
