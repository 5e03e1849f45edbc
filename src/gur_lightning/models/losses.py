"""Augmented dual-contrastive (ADC) loss, docs/method.md §6.2.

Each stream is a cluster-contrast InfoNCE: cross-entropy of the memory logits
``norm(f) M^T / τ`` against the pseudo-label (docs/method.md §6.1). The visible stream carries both
views of every image, ``cat(view1, view2)``, with the labels duplicated; the reference weighs the
two streams 1 and 1 and has no other term (docs/method.md §6.2 step 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gur_lightning.models.memory import at_least_fp32
from gur_lightning.models.options import LOSS_WEIGHT

__all__ = ["adc_loss", "duplicate_views", "info_nce"]


def info_nce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cluster-contrast InfoNCE: mean cross-entropy of memory logits (docs/method.md §6.1).

    Args:
        logits: ``(B, K)`` fp32 ``norm(f) M^T / τ``.
        labels: ``(B,)`` cluster ids in ``[0, K)``.

    Returns:
        Scalar ``−(1/B) Σ_b log softmax(logits_b)[y_b]``, in fp32 (fp64 for fp64 logits).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(at_least_fp32(logits), labels.long())


def duplicate_views(view1: Tensor, view2: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Stack the two visible views and repeat their labels (docs/method.md §6.2 step 2).

    Args:
        view1: ``(B, 3, H, W)`` the normally augmented images.
        view2: ``(B, 3, H, W)`` the channel-exchanged views of the same images.
        labels: ``(B,)``.

    Returns:
        ``(2B, 3, H, W)`` images ``cat(view1, view2)`` and ``(2B,)`` labels ``cat(y, y)``.
    """
    if view1.shape != view2.shape or labels.shape != view1.shape[:1]:
        raise ValueError(
            f"duplicate_views: views {tuple(view1.shape)} / {tuple(view2.shape)} and labels "
            f"{tuple(labels.shape)} do not match"
        )
    return torch.cat([view1, view2]), torch.cat([labels, labels])


def adc_loss(
    logits_visible: Tensor | None,
    labels_visible: Tensor | None,
    logits_infrared: Tensor | None,
    labels_infrared: Tensor | None,
    *,
    weight_visible: float = LOSS_WEIGHT,
    weight_infrared: float = LOSS_WEIGHT,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ADC loss ``w_ir·CE(s_ir, y_ir) + w_vis·CE(s_vis, y_vis)`` (docs/method.md §6.2).

    Either stream may be ``None`` (a phase that trains one modality); at least one is needed.

    Args:
        logits_visible: ``(B_v, K_v)`` logits of the visible batch (both views stacked).
        labels_visible: ``(B_v,)``.
        logits_infrared: ``(B_i, K_i)`` logits of the infrared batch.
        labels_infrared: ``(B_i,)``.
        weight_visible: Weight of the visible term (reference: 1).
        weight_infrared: Weight of the infrared term (reference: 1).

    Returns:
        ``(loss, parts)``: the weighted scalar total, and the unweighted per-stream terms under
        ``"visible"`` / ``"infrared"`` (only the streams given).
    """
    parts: dict[str, Tensor] = {}
    total: Tensor | None = None
    streams = (
        ("visible", logits_visible, labels_visible, weight_visible),
        ("infrared", logits_infrared, labels_infrared, weight_infrared),
    )
    for name, logits, labels, weight in streams:
        if logits is None:
            continue
        if labels is None:
            raise ValueError(f"adc_loss: logits_{name} given without labels_{name}")
        parts[name] = info_nce(logits, labels)
        term = weight * parts[name]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("adc_loss: neither visible nor infrared logits were given")
    return total, parts
