"""Run a data set's official evaluation protocols on any feature extractor (docs/method.md §13).

Features are extracted once for the union of every query and gallery image the protocols need
(SYSU-MM01's ten gallery draws share one query set), then each protocol and trial is scored from
its own distance matrix with the functional metrics. The result is a flat dict
``{prefix}/{protocol}/{metric}`` with the mean over trials and ``..._std`` beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from gur_lightning.data.samples import MODALITIES, Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: The figures reported per protocol, in table order.
METRIC_NAMES: tuple[str, ...] = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")

FeatureFn = Callable[[Sequence[Sample]], torch.Tensor]

#: Name prefix of the within-modality diagnostic settings (``within_visible``...).
WITHIN_MODALITY_PREFIX = "within_"


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


def _score(
    protocol: str, q: Sequence[Sample], g: Sequence[Sample], qf: torch.Tensor, gf: torch.Tensor
) -> dict[str, float]:
    from gur_lightning.metrics import evaluate_llcm, evaluate_rank, evaluate_regdb, evaluate_sysu

    # Cosine distance of L2-normalised features; the reference ranks by -q.g (§13.1).
    distmat = (-(qf @ gf.T)).numpy()
    q_pids = np.array([s.pid for s in q])
    g_pids = np.array([s.pid for s in g])
    q_cams = np.array([s.camid for s in q])
    g_cams = np.array([s.camid for s in g])
    if protocol.startswith(WITHIN_MODALITY_PREFIX):
        if len(set(q_cams.tolist()) | set(g_cams.tolist())) == 1:
            # One camera (RegDB): every other image of the modality is a candidate; giving
            # each image its own camera makes the market rule drop only the query itself.
            q_cams = g_cams = np.arange(len(q))
        res = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, protocol="market")
    elif protocol.startswith("sysu"):
        res = evaluate_sysu(distmat, q_pids, g_pids, q_cams, g_cams)
    elif protocol.startswith("llcm"):
        res = evaluate_llcm(distmat, q_pids, g_pids, q_cams, g_cams)
    else:
        res = evaluate_regdb(distmat, q_pids, g_pids)
    cmc = res["cmc"]
    out = {f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in (1, 5, 10, 20)}
    out.update(mAP=float(res["mAP"]), mINP=float(res["mINP"]))
    return out


def evaluate_splits(
    splits: dict[str, list[tuple[list[Sample], list[Sample]]]],
    featurize: FeatureFn,
    *,
    prefix: str = "test",
) -> dict[str, float]:
    """Score every protocol's trials with one feature pass.

    Args:
        splits: Protocol name -> list of (query, gallery) sample lists, one per trial.
        featurize: Maps a list of samples to their (N, D) L2-normalised features.
        prefix: Key prefix (``test`` or ``val``).

    Returns:
        ``{prefix}/{protocol}/{metric}`` means over trials, ``..._std`` the standard deviations,
        and ``{prefix}/{protocol}/trials`` the trial count.
    """
    unique: dict[str, int] = {}
    ordered: list[Sample] = []
    for trials in splits.values():
        for query, gallery in trials:
            for s in (*query, *gallery):
                if s.path not in unique:
                    unique[s.path] = len(ordered)
                    ordered.append(s)
    feats = featurize(ordered).float().cpu()
    out: dict[str, float] = {}
    for name, trials in splits.items():
        rows = []
        for query, gallery in trials:
            qf = feats[[unique[s.path] for s in query]]
            gf = feats[[unique[s.path] for s in gallery]]
            rows.append(_score(name, query, gallery, qf, gf))
        for metric in METRIC_NAMES:
            values = np.array([r[metric] for r in rows])
            out[f"{prefix}/{name}/{metric}"] = float(values.mean())
            out[f"{prefix}/{name}/{metric}_std"] = float(values.std())
        out[f"{prefix}/{name}/trials"] = float(len(rows))
    return out


def protocol_splits(
    dataset, *, max_trials: int | None = None, within_modality: bool = False
) -> dict[str, list[tuple[list[Sample], list[Sample]]]]:
    """The (query, gallery) lists of every official protocol of a data set, per trial.

    Args:
        dataset: A data set returned by :func:`gur_lightning.data.load_dataset`.
        max_trials: Keep only the first N trials of each protocol (None: all).
        within_modality: Add the diagnostic ``within_visible`` and ``within_infrared``
            settings (docs/method.md §13.4, logged only by the reference): every test image of a
            modality queries all the others, Market-style (same identity in the same camera
            removed; with a single camera only the query itself). They separate "the network
            does not tell people apart" from "it does, but not across the modality gap".

    Returns:
        Protocol name (``sysu_all``, ``regdb_v2t``...) -> list of (query, gallery) per trial.
    """
    splits: dict[str, list[tuple[list[Sample], list[Sample]]]] = {}
    for proto in dataset.protocols():
        kwargs = dict(proto["kwargs"])
        trials = list(proto.get("trials") or [None])
        if max_trials is not None:
            trials = trials[:max_trials]
        splits[proto["name"]] = [
            dataset.test_split(**kwargs, **({} if t is None else {"trial": t})) for t in trials
        ]
    if within_modality:
        for modality in MODALITIES:
            samples = dataset.test_samples(modality)
            splits[f"{WITHIN_MODALITY_PREFIX}{modality}"] = [(samples, samples)]
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
