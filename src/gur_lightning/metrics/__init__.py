"""Ranking metrics of the official evaluation (docs/method.md §13, docs/architecture.md §11.7).

* :func:`evaluate_rank`: the engine: CMC, mAP and mINP of one distance matrix under a rank rule
  (:data:`RANK_RULES`), with per-query results.
* :func:`evaluate_sysu`, :func:`evaluate_regdb`, :func:`evaluate_llcm`: the official
  ``eval_sysu`` / ``eval_regdb`` / DEEN ``eval_llcm`` numbers, through the engine.
* :func:`removed_from_gallery`: the gallery removal rules, shared by the engine and the pictures.
* :func:`cosine_distance`: the distance the reference evaluation uses.

Which rule scores which data set setting, and how trials are drawn and averaged, is the protocol
table's business (:mod:`gur_lightning.data.protocols`, scored by :mod:`gur_lightning.evaluation`).
"""

from gur_lightning.metrics.functional import (
    RANK_RULES,
    RankRule,
    cosine_distance,
    evaluate_llcm,
    evaluate_rank,
    evaluate_regdb,
    evaluate_sysu,
    removed_from_gallery,
    resolve_rank_rule,
)

__all__ = [
    "RANK_RULES",
    "RankRule",
    "cosine_distance",
    "evaluate_llcm",
    "evaluate_rank",
    "evaluate_regdb",
    "evaluate_sysu",
    "removed_from_gallery",
    "resolve_rank_rule",
]
