"""What every re-clustering logs: cluster counts, outliers, sizes and agreement with the truth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from gur_lightning.clustering._validation import as_label_array

SHARED_KEY = "shared"
"""Prefix of the statistics of clusters spanning two or more groups (e.g. both modalities)."""


def _sizes(labels: np.ndarray) -> np.ndarray:
    kept = labels[labels >= 0]
    return np.bincount(kept)[np.unique(kept)] if kept.size else np.zeros(0, dtype=np.int64)


def _purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Σ_k max_p |cluster k ∩ identity p| / n over the given (non-outlier) samples."""
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return float(table.max(axis=1).sum() / pred.size)


def _outliers_as_singletons(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out_idx = np.flatnonzero(out < 0)
    out[out_idx] = (labels.max() + 1 if labels.size else 0) + np.arange(out_idx.size)
    return out


def cluster_statistics(
    labels: Any,
    *,
    true_pids: Any | None = None,
    groups: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Summary of one set of pseudo-labels, as flat float values for a logger.

    Always: ``num_samples``, ``num_clusters`` (distinct ids >= 0), ``num_outliers``,
    ``outlier_fraction``, ``cluster_size_min/mean/median/max`` (0 when there is no cluster) and
    ``num_singletons`` (clusters of one sample).

    With ``true_pids`` (SynVI, or real labels kept aside): ``ari``, ``nmi`` and ``purity`` over
    the non-outlier samples only (outliers are dropped from training, so they are scored on
    what is trained; NaN when every sample is an outlier), plus ``ari_outliers_singletons``
    over all samples with each outlier as its own cluster (penalises a clustering that hides
    its mistakes among the outliers) and ``num_true_ids``.

    With ``groups`` (name -> boolean mask over the samples, e.g. per modality or camera):
    ``{name}/num_samples``, ``{name}/num_clusters`` (clusters with a member in the group) and
    ``{name}/outlier_fraction``; and ``shared/num_clusters``: clusters with members in at least
    two groups (for the two modalities, the cross-modality clusters).

    Args:
        labels: (N,) pseudo-labels, ``-1`` for outliers.
        true_pids: (N,) ground-truth identities, or ``None``.
        groups: Mapping of group name to an (N,) boolean mask, or ``None``.

    Returns:
        Flat ``dict[str, float]``.

    Raises:
        ValueError: On mismatched lengths, non-boolean masks or a group named ``shared`` or
            containing ``/``.
    """
    lab = as_label_array(labels, "labels")
    n = lab.size
    sizes = _sizes(lab)
    num_outliers = int((lab < 0).sum())
    stats: dict[str, float] = {
        "num_samples": float(n),
        "num_clusters": float(sizes.size),
        "num_outliers": float(num_outliers),
        "outlier_fraction": float(num_outliers / n) if n else 0.0,
        "cluster_size_min": float(sizes.min()) if sizes.size else 0.0,
        "cluster_size_mean": float(sizes.mean()) if sizes.size else 0.0,
        "cluster_size_median": float(np.median(sizes)) if sizes.size else 0.0,
        "cluster_size_max": float(sizes.max()) if sizes.size else 0.0,
        "num_singletons": float((sizes == 1).sum()),
    }
    if true_pids is not None:
        truth = np.asarray(true_pids.cpu() if hasattr(true_pids, "cpu") else true_pids)
        if truth.ndim != 1 or truth.size != n:
            raise ValueError(f"true_pids must be (N,) = ({n},), got shape {truth.shape}")
        keep = lab >= 0
        if keep.any():
            stats["ari"] = float(adjusted_rand_score(truth[keep], lab[keep]))
            stats["nmi"] = float(normalized_mutual_info_score(truth[keep], lab[keep]))
            stats["purity"] = _purity(lab[keep], truth[keep])
        else:
            stats["ari"] = stats["nmi"] = stats["purity"] = float("nan")
        stats["ari_outliers_singletons"] = (
            float(adjusted_rand_score(truth, _outliers_as_singletons(lab))) if n else float("nan")
        )
        stats["num_true_ids"] = float(np.unique(truth).size)
    if groups:
        membership = []
        for name, mask_like in groups.items():
            if name == SHARED_KEY or "/" in name:
                raise ValueError(f"group name {name!r} is reserved or contains '/'")
            mask = np.asarray(mask_like.cpu() if hasattr(mask_like, "cpu") else mask_like)
            if mask.dtype != bool or mask.shape != (n,):
                raise ValueError(
                    f"groups[{name!r}] must be a boolean mask of shape ({n},), got "
                    f"{mask.dtype} {mask.shape}"
                )
            g_lab = lab[mask]
            present = np.unique(g_lab[g_lab >= 0])
            membership.append(present)
            stats[f"{name}/num_samples"] = float(mask.sum())
            stats[f"{name}/num_clusters"] = float(present.size)
            stats[f"{name}/outlier_fraction"] = float((g_lab < 0).mean()) if g_lab.size else 0.0
        if membership:
            seen = np.concatenate(membership)
            _, counts = np.unique(seen, return_counts=True)
            stats[f"{SHARED_KEY}/num_clusters"] = float((counts >= 2).sum())
    return stats
