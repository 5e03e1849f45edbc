"""Cluster memories from pseudo-labels (docs/method.md §7.4).

After every clustering the reference re-creates each memory from scratch: the mean of the
members' original extracted features ``e`` per non-outlier cluster, in ascending label order,
then L2-normalised (``generate_cluster_features`` + ``memory.features = norm(centroids)``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from gur_lightning.clustering._validation import as_feature_tensor, as_label_array

LabelsT = TypeVar("LabelsT", np.ndarray, torch.Tensor)


def relabel_contiguous(labels: LabelsT) -> tuple[LabelsT, int]:
    """Renumber cluster ids to ``0..K-1`` in ascending order of the old ids; ``-1`` stays.

    Args:
        labels: (N,) integer labels (numpy or torch), ``-1`` for outliers, any other ids >= 0.

    Returns:
        ``(labels, K)``: relabelled (N,) int64 array of the input's kind (a torch input stays on
        its device) and the number of clusters K.

    Raises:
        ValueError: If the labels are not 1-D integers >= -1.
    """
    array = as_label_array(labels, "labels")
    kept = np.unique(array[array >= 0])
    out = np.full(array.shape, -1, dtype=np.int64)
    mask = array >= 0
    out[mask] = np.searchsorted(kept, array[mask])
    if isinstance(labels, torch.Tensor):
        return torch.from_numpy(out).to(labels.device), int(kept.size)
    return out, int(kept.size)


def cluster_centroids(features: Any, labels: Any) -> torch.Tensor:
    """L2-normalised mean feature of each cluster ``0..K-1`` (docs/method.md §7.4).

    Args:
        features: (N, D) features ``e`` (torch or numpy; the original extracted features even
            when clustering ran on CAE vectors, §7.4).
        labels: (N,) contiguous labels ``0..K-1`` (every id present), ``-1`` for outliers,
            which are ignored. Use :func:`relabel_contiguous` first for arbitrary ids.

    Returns:
        (K, D) float32 tensor on the features' device, rows of unit norm; (0, D) when every
        point is an outlier.

    Raises:
        ValueError: If lengths differ or the labels are not contiguous.
    """
    x = as_feature_tensor(features)
    lab = as_label_array(labels, "labels", length=x.shape[0])
    mask = lab >= 0
    k = int(lab.max()) + 1 if mask.any() else 0
    counts = np.bincount(lab[mask], minlength=k)
    if k and (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(
            f"labels must be contiguous 0..{k - 1}, but {missing.size} id(s) have no member "
            f"(first: {int(missing[0])}); call relabel_contiguous(labels) first"
        )
    idx = torch.as_tensor(np.flatnonzero(mask), device=x.device)
    lab_t = torch.as_tensor(lab[mask], device=x.device)
    # Sums in float64: a large cluster's float32 running sum would lose the last digits.
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
    sums.index_add_(0, lab_t, x[idx].double())
    means = sums / torch.as_tensor(counts, dtype=torch.float64, device=x.device)[:, None]
    return F.normalize(means, dim=1).float()
