"""Evaluation protocols and metrics (docs/method.md §13, docs/architecture.md §11.7).

* :func:`evaluate_sysu`, :func:`evaluate_regdb`, :func:`evaluate_llcm`: the official
  ``eval_sysu`` / ``eval_regdb`` / DEEN ``eval_llcm`` numbers (CMC, mAP, mINP), vectorised.
* :func:`evaluate_rank`: the shared engine, by protocol name, with per-query results.
* :func:`evaluate_trials`: mean and standard deviation over gallery trials (SYSU's ten).
* :class:`ReIDMetric`: a ``torchmetrics.Metric`` gathering features under DDP.
* :func:`cosine_distance`: the distance the reference evaluation uses.
"""

from gur_lightning.metrics.functional import (
    PROTOCOLS,
    RankProtocol,
    cosine_distance,
    evaluate_llcm,
    evaluate_rank,
    evaluate_regdb,
    evaluate_sysu,
    evaluate_trials,
)
from gur_lightning.metrics.reid import ReIDMetric

__all__ = [
    "PROTOCOLS",
    "RankProtocol",
    "ReIDMetric",
    "cosine_distance",
    "evaluate_llcm",
    "evaluate_rank",
    "evaluate_regdb",
    "evaluate_sysu",
    "evaluate_trials",
]
