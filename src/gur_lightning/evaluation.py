"""Score the settings of the protocol table on any feature extractor (docs/method.md §13).

The one evaluation stack: :func:`protocol_splits` draws each setting's trials as its entry in
:data:`gur_lightning.data.protocols.PROTOCOLS` says, features are extracted once for the union of
every query and gallery image (SYSU-MM01's ten gallery draws share one query set), each trial is
scored from its own distance matrix with the entry's rank rule (:func:`score_trial`), and the
trials are averaged (:func:`average_trials`). The result is a flat dict
``{prefix}/{protocol}/{metric}`` with the mean over trials and ``..._std`` beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from gur_lightning.data.protocols import (
    EvalProtocol,
    diagnostic_protocols,
    get_protocol,
    official_protocols,
)
from gur_lightning.data.readers import VIReIDDataset
from gur_lightning.data.samples import Sample
from gur_lightning.metrics.functional import REPORTED_RANKS, cosine_distance, evaluate_rank
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: The figures reported per protocol, in table order.
METRIC_NAMES: tuple[str, ...] = (*(f"rank{r}" for r in REPORTED_RANKS), "mAP", "mINP")

FeatureFn = Callable[[Sequence[Sample]], torch.Tensor]


@torch.no_grad()
def extract_features(pl_module, loader, num_samples: int, *, renormalize: bool) -> torch.Tensor:
    """Flip-averaged features of every sample a (sharded) eval loader covers, on every rank.

    Args:
        pl_module: A module with ``embed(images, modality, renormalize=...)`` and
            ``feature_dim`` (:class:`gur_lightning.models.GURLitModule`).
        loader: Yields dicts with ``img`` (B, 3, H, W), ``modality`` (B,) and ``index`` (B,);
            under DDP each rank sees its own shard.
        num_samples: Number of samples the loader covers across all ranks.
        renormalize: Re-normalise after flip-averaging: True for test features (§13.1), False for
            clustering features (§7.1).

    Returns:
        (num_samples, D) float32 on CPU, row i the feature of sample index i.
    """
    from gur_lightning.utils.distributed import gather_by_index

    device = pl_module.device
    feats, index = [], []
    for batch in loader:
        images = batch["img"].to(device)
        emb = pl_module.embed(images, batch["modality"].to(device), renormalize=renormalize)
        feats.append(emb.float())
        index.append(batch["index"].to(device))
    local = torch.cat(feats) if feats else torch.zeros(0, pl_module.feature_dim, device=device)
    local_index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long, device=device)
    return gather_by_index(local, local_index, num_samples).cpu()


def featurize_once(
    featurize: FeatureFn, sample_lists: Iterable[Sequence[Sample]]
) -> tuple[torch.Tensor, dict[str, int]]:
    """Features of every distinct image of some sample lists, from one extraction.

    SYSU-MM01's ten gallery draws share one query set and overlap each other, so the union is
    much smaller than the sum; under DDP the extraction is collective, so every rank calls this
    with the same lists.

    Args:
        featurize: Maps a list of samples to their (N, D) L2-normalised features.
        sample_lists: The query and gallery lists to cover.

    Returns:
        ``(features, row)``: (U, D) float32 CPU features of the U distinct images (by path), and
        the row of each path.

    Raises:
        ValueError: One path listed with two different identities, cameras or modalities (the
            lists would be scored with labels that contradict each other).
    """
    row: dict[str, int] = {}
    ordered: list[Sample] = []
    for samples in sample_lists:
        for s in samples:
            seen = row.get(s.path)
            if seen is None:
                row[s.path] = len(ordered)
                ordered.append(s)
            elif ordered[seen] != s:
                raise ValueError(
                    f"sample {s.path!r} is listed as {ordered[seen]} and as {s}; one image "
                    "must carry one identity, camera and modality in every list"
                )
    return featurize(ordered).float().cpu(), row


def score_trial(
    protocol: EvalProtocol,
    query: Sequence[Sample],
    gallery: Sequence[Sample],
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
) -> dict[str, float]:
    """Score one trial of a protocol with its rank rule (docs/method.md §13).

    Args:
        protocol: The table entry.
        query: Q query samples.
        gallery: G gallery samples.
        query_features: (Q, D) L2-normalised features.
        gallery_features: (G, D) L2-normalised features.

    Returns:
        ``rank1``, ``rank5``, ``rank10``, ``rank20``, ``mAP`` and ``mINP`` (fractions).
    """
    # Features are unit length already; normalising again would change the last bits.
    distmat = cosine_distance(query_features, gallery_features, normalize=False).numpy()
    res = evaluate_rank(distmat, *protocol.rule_inputs(query, gallery), rule=protocol.rule)
    cmc = res["cmc"]
    out = {f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in REPORTED_RANKS}
    out.update(mAP=float(res["mAP"]), mINP=float(res["mINP"]))
    return out


def average_trials(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and population standard deviation of per-trial figures (docs/method.md §13.2).

    Args:
        rows: One :func:`score_trial` result per trial (at least one).

    Returns:
        ``<metric>`` means, ``<metric>_std`` standard deviations (ddof 0) and ``trials``.
    """
    out: dict[str, float] = {}
    for metric in METRIC_NAMES:
        values = np.array([r[metric] for r in rows])
        out[metric] = float(values.mean())
        out[f"{metric}_std"] = float(values.std())
    out["trials"] = float(len(rows))
    return out


def evaluate_splits(
    splits: Mapping[str, Sequence[tuple[Sequence[Sample], Sequence[Sample]]]],
    featurize: FeatureFn,
    *,
    prefix: str = "test",
) -> dict[str, float]:
    """Score every protocol's trials with one feature pass.

    Args:
        splits: Protocol name (a key of :data:`gur_lightning.data.protocols.PROTOCOLS`) -> list
            of (query, gallery) sample lists, one per trial (:func:`protocol_splits`).
        featurize: Maps a list of samples to their (N, D) L2-normalised features.
        prefix: Key prefix (``test``, ``val``...).

    Returns:
        ``{prefix}/{protocol}/{metric}`` means over trials, ``..._std`` the standard deviations,
        and ``{prefix}/{protocol}/trials`` the trial count.

    Raises:
        UnknownProtocolError: A name that is not in the protocol table (before any feature is
            extracted).
        ValueError: A protocol without trials.
    """
    protocols = {name: get_protocol(name) for name in splits}
    for name, trials in splits.items():
        if not trials:
            raise ValueError(f"protocol {name!r}: no trial to score")
    feats, row = featurize_once(
        featurize, (side for trials in splits.values() for pair in trials for side in pair)
    )
    out: dict[str, float] = {}
    for name, trials in splits.items():
        scores = [
            score_trial(
                protocols[name],
                query,
                gallery,
                feats[[row[s.path] for s in query]],
                feats[[row[s.path] for s in gallery]],
            )
            for query, gallery in trials
        ]
        out.update({f"{prefix}/{name}/{k}": v for k, v in average_trials(scores).items()})
    return out


def protocol_splits(
    dataset: VIReIDDataset,
    names: Sequence[str] | None = None,
    *,
    max_trials: int | None = None,
    within_modality: bool = False,
) -> dict[str, list[tuple[list[Sample], list[Sample]]]]:
    """The (query, gallery) lists of some protocols of the table, per trial.

    Args:
        dataset: A data set returned by :func:`gur_lightning.data.load_dataset`.
        names: The protocols to draw, by name; None: the data set's official protocols
            (:func:`gur_lightning.data.protocols.official_protocols`), in reporting order.
        max_trials: Keep only the first N trials of each protocol (None: all).
        within_modality: With ``names=None``, add the diagnostic ``within_visible`` and
            ``within_infrared`` settings (docs/method.md §13.4).

    Returns:
        Protocol name (``sysu_all``, ``regdb_v2t``...) -> list of (query, gallery) per trial.

    Raises:
        UnknownProtocolError: An unknown name, or a data set without official protocols.
        ValueError: ``max_trials`` below 1.
    """
    if max_trials is not None and max_trials < 1:
        raise ValueError(
            f"max_trials: expected a positive number of trials or None, got {max_trials}"
        )
    if names is None:
        chosen = official_protocols(dataset.name)
        if within_modality:
            chosen += diagnostic_protocols()
    else:
        chosen = [get_protocol(name) for name in names]
    splits: dict[str, list[tuple[list[Sample], list[Sample]]]] = {}
    for protocol in chosen:
        trials = protocol.trial_values(dataset)
        if max_trials is not None:
            trials = trials[:max_trials]
        splits[protocol.name] = [protocol.build(dataset, t) for t in trials]
    return splits


def format_table(metrics: dict[str, float], prefix: str = "test") -> str:
    """Render ``mean ± std`` per protocol as a fixed-width text table (percent)."""
    names = sorted(
        {k.split("/")[1] for k in metrics if k.startswith(prefix + "/") and k.count("/") == 2}
    )
    header = f"{'protocol':<16}" + "".join(f"{m:>15}" for m in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = []
        for m in METRIC_NAMES:
            mean = metrics.get(f"{prefix}/{name}/{m}")
            std = metrics.get(f"{prefix}/{name}/{m}_std", 0.0)
            cells.append(
                f"{100 * mean:>8.2f} ± {100 * std:4.2f}" if mean is not None else " " * 15
            )
        lines.append(f"{name:<16}" + "".join(cells))
    return "\n".join(lines)
