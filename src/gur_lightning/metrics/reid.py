"""``ReIDMetric``: a torchmetrics ``Metric`` for CMC / mAP / mINP (docs/architecture.md §11.7).

The metric gathers features, identities, cameras, a query flag and each sample's dataset index
during validation or test, then builds one distance matrix and calls the protocol's ranking
function (:mod:`gur_lightning.metrics.functional`, docs/method.md §13). One metric returns all the
numbers, so the distance matrix is computed once.

DDP: list states are concatenated across processes by torchmetrics (``dist_reduce_fx="cat"``,
uneven sizes are padded and trimmed), so ``compute()`` returns the same values on every rank.
A ``DistributedSampler`` pads the dataset by repeating samples, so the metric de-duplicates by
sample ``index``; it splits query from gallery by the ``is_query`` flag, never by position,
because the gathered order depends on the world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from gur_lightning.metrics.functional import (
    DEFAULT_MAX_RANK,
    REPORTED_RANKS,
    ArrayLike,
    cosine_distance,
    evaluate_rank,
    evaluate_trials,
    resolve_protocol,
)
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


class ReIDMetric(Metric):
    """Cross-modality re-ID evaluation (CMC, mAP, mINP) over gathered query/gallery features.

    Query and gallery samples of one evaluation direction are fed through the same metric
    (e.g. SYSU: IR queries and RGB gallery; one instance per RegDB direction). Features are
    L2-normalised and compared with the negated cosine similarity, as the reference does
    (docs/method.md §13.1).

    Gallery trials (SYSU's ten single-shot galleries, docs/method.md §13.2): give a (T, N) boolean
    array over the *dataset index space* (``gallery_trials[t, i]`` is True when the sample with
    index ``i`` belongs to trial ``t``'s gallery), either at construction or with
    :meth:`set_gallery_trials`. The dataset then holds the queries plus the union of all trial
    galleries, each sample with a unique index; ``compute()`` returns the trial means and, with
    a ``_std`` suffix, their population standard deviations.

    Args:
        protocol: ``"sysu"``, ``"regdb"``, ``"llcm"`` or ``"market"``
            (:data:`gur_lightning.metrics.functional.PROTOCOLS`).
        max_rank: CMC length; ``rank{k}`` is reported for k in (1, 5, 10, 20) with
            ``k <= max_rank``.
        gallery_trials: Optional (T, N) boolean trial masks over sample indices.
        **kwargs: Forwarded to :class:`torchmetrics.Metric` (``compute_on_cpu`` defaults to
            True: the gathered features of a whole test set belong on the host).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    feats: list[torch.Tensor]
    pids: list[torch.Tensor]
    camids: list[torch.Tensor]
    is_query: list[torch.Tensor]
    index: list[torch.Tensor]

    def __init__(
        self,
        protocol: str = "sysu",
        max_rank: int = DEFAULT_MAX_RANK,
        gallery_trials: ArrayLike | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("compute_on_cpu", True)
        super().__init__(**kwargs)
        self.protocol = resolve_protocol(protocol)
        if max_rank < 1:
            raise ValueError(f"max_rank: expected a positive integer, got {max_rank}")
        self.max_rank = max_rank
        self._gallery_trials: np.ndarray | None = None
        if gallery_trials is not None:
            self.set_gallery_trials(gallery_trials)
        for name in ("feats", "pids", "camids", "is_query", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def set_gallery_trials(self, gallery_trials: ArrayLike | None) -> None:
        """Set (or clear, with None) the gallery trial masks used by :meth:`compute`.

        Args:
            gallery_trials: (T, N) boolean array or tensor; row t marks the sample indices of
                trial t's gallery.

        Raises:
            ValueError: Not a non-empty 2-D boolean array.
        """
        # torchmetrics caches compute()'s value until the next update(); new masks change it.
        self._computed = None
        if gallery_trials is None:
            self._gallery_trials = None
            return
        masks = (
            gallery_trials.detach().cpu().numpy()
            if isinstance(gallery_trials, torch.Tensor)
            else np.asarray(gallery_trials)
        )
        if masks.ndim != 2 or masks.shape[0] == 0 or masks.dtype != np.bool_:
            raise ValueError(
                "gallery_trials: expected a (T >= 1, N) boolean array over sample indices, "
                f"got shape {tuple(masks.shape)} and dtype {masks.dtype}"
            )
        self._gallery_trials = masks

    def update(
        self,
        feats: torch.Tensor,
        pids: torch.Tensor,
        camids: torch.Tensor,
        is_query: torch.Tensor,
        index: torch.Tensor,
    ) -> None:
        """Store one batch.

        Args:
            feats: (B, D) features (normalisation happens in :meth:`compute`).
            pids: (B,) identities.
            camids: (B,) cameras.
            is_query: (B,) bool, True for query samples.
            index: (B,) long, the sample's index in the evaluation dataset; unique across
                query and gallery (duplicates are treated as the same sample).

        Raises:
            ValueError: Shapes that disagree.
        """
        if feats.ndim != 2:
            raise ValueError(f"feats: expected (B, D), got shape {tuple(feats.shape)}")
        batch = feats.shape[0]
        for name, value in (
            ("pids", pids),
            ("camids", camids),
            ("is_query", is_query),
            ("index", index),
        ):
            if value.ndim != 1 or value.shape[0] != batch:
                raise ValueError(
                    f"{name}: expected shape ({batch},) to match feats, got {tuple(value.shape)}"
                )
        self.feats.append(feats.detach())
        self.pids.append(pids.detach().long())
        self.camids.append(camids.detach().long())
        # uint8 rather than bool: every torch.distributed backend can all-gather it.
        self.is_query.append(is_query.detach().to(torch.uint8))
        self.index.append(index.detach().long())

    def _gathered(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Concatenate the states and keep one copy of every sample index (sorted by index).

        Returns:
            ``(feats (N, D) float32, pids (N,), camids (N,), is_query (N,) bool, index (N,))``.

        Raises:
            ValueError: Nothing was gathered, or two copies of one index disagree on identity,
                camera or query flag (indices must be unique per sample).
        """
        if isinstance(self.index, list) and len(self.index) == 0:
            raise ValueError("ReIDMetric.compute() called before any update()")
        index = dim_zero_cat(self.index).cpu().numpy()
        pids = dim_zero_cat(self.pids).cpu().numpy()
        camids = dim_zero_cat(self.camids).cpu().numpy()
        is_query = dim_zero_cat(self.is_query).cpu().numpy().astype(bool)
        _, first, inverse = np.unique(index, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        for name, values in (("pids", pids), ("camids", camids), ("is_query", is_query)):
            if not np.array_equal(values, values[first][inverse]):
                bad = index[values != values[first][inverse]][0]
                raise ValueError(
                    f"index: sample index {int(bad)} was given with different {name}; "
                    "indices must identify samples uniquely across query and gallery"
                )
        feats = dim_zero_cat(self.feats)[torch.from_numpy(first)].float()
        return feats, pids[first], camids[first], is_query[first], index[first]

    def compute(self) -> dict[str, torch.Tensor]:
        """Compute the protocol's numbers from one distance matrix.

        Returns:
            ``{"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}`` as float32 scalar tensors
            (fractions in [0, 1]); ranks above ``max_rank`` are left out. With gallery trials,
            these are trial means and the same keys with a ``_std`` suffix are added.

        Raises:
            ValueError: No query or no gallery sample, trial masks not covering the indices,
                or any error of :func:`~gur_lightning.metrics.functional.evaluate_rank`.
        """
        feats, pids, camids, is_query, index = self._gathered()
        if not is_query.any() or is_query.all():
            raise ValueError(
                f"ReIDMetric: need both query and gallery samples, got {int(is_query.sum())} "
                f"query and {int((~is_query).sum())} gallery"
            )
        q_sel = torch.from_numpy(is_query)
        distmat = cosine_distance(feats[q_sel], feats[~q_sel]).cpu().numpy()
        q_pids, g_pids = pids[is_query], pids[~is_query]
        q_cams, g_cams = camids[is_query], camids[~is_query]
        reported = [k for k in REPORTED_RANKS if k <= self.max_rank]

        if self._gallery_trials is None:
            res = evaluate_rank(
                distmat, q_pids, g_pids, q_cams, g_cams, self.protocol, self.max_rank
            )
            values = {f"rank{k}": res["cmc"][k - 1] for k in reported}
            values.update(mAP=res["mAP"], mINP=res["mINP"])
        else:
            g_index = index[~is_query]
            if g_index.max() >= self._gallery_trials.shape[1]:
                raise ValueError(
                    f"gallery_trials: masks cover indices < {self._gallery_trials.shape[1]}, "
                    f"but gallery sample index {int(g_index.max())} was seen"
                )
            res = evaluate_trials(
                distmat,
                q_pids,
                g_pids,
                q_cams,
                g_cams,
                self._gallery_trials[:, g_index],
                self.protocol,
                self.max_rank,
            )
            values = {}
            for suffix in ("", "_std"):
                values.update({f"rank{k}{suffix}": res[f"cmc{suffix}"][k - 1] for k in reported})
                values[f"mAP{suffix}"] = res[f"mAP{suffix}"]
                values[f"mINP{suffix}"] = res[f"mINP{suffix}"]
        return {key: torch.tensor(float(v), dtype=torch.float32) for key, v in values.items()}
