"""The protocol table: every setting a model is scored on, one entry each (docs/method.md §13).

An entry says which images query which (query and gallery modality, and the data set's split
builder that lists them: ``test_split``, ``test_samples`` or ``validation_split`` of
:mod:`gur_lightning.data.readers`), which gallery items a query may not see (a rank rule of
:mod:`gur_lightning.metrics.functional`, applied by the metrics and by the ranking pictures alike),
and which trials are drawn. A setting's figures are the mean and population standard deviation of
the per-trial figures (:func:`gur_lightning.evaluation.evaluate_splits`).

Three kinds of setting:

* ``official``: the published protocols of a data set (SYSU-MM01 §13.2, RegDB §13.3, LLCM).
* ``diagnostic``: within-modality retrieval on the test identities (§13.4), any data set.
* ``validation``: the held-out identities used for model selection, any data set.

Everything that scores or draws a setting looks its name up here (:func:`get_protocol`); a name
that is not in the table is an error that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np

from gur_lightning.data.readers import VIReIDDataset
from gur_lightning.data.readers.common import NUM_GALLERY_TRIALS
from gur_lightning.data.samples import Modality, Sample
from gur_lightning.metrics.functional import RANK_RULES, RankRule

__all__ = [
    "PROTOCOLS",
    "EvalProtocol",
    "RuleInputs",
    "UnknownProtocolError",
    "diagnostic_protocols",
    "get_protocol",
    "official_protocols",
]

#: ``split(dataset, trial) -> (query, gallery)``: one trial of a setting.
SplitBuilder = Callable[[VIReIDDataset, int | None], tuple[list[Sample], list[Sample]]]

#: How a setting's trials are drawn:
#: ``gallery_seeds``: the single-shot gallery is drawn again with seeds 0..9 (SYSU-MM01, LLCM;
#: docs/method.md §13.2), the query set stays the same;
#: ``loaded_split``: the identity split the data set was loaded with, once (RegDB's ten splits
#: are ten trainings, docs/method.md §13.3);
#: ``once``: one evaluation of the split builder's default.
TrialDraw = Literal["gallery_seeds", "loaded_split", "once"]

ProtocolKind = Literal["official", "diagnostic", "validation"]


class UnknownProtocolError(ValueError):
    """A protocol name that is not in :data:`PROTOCOLS`."""


class RuleInputs(NamedTuple):
    """The labels a rank rule sees for one (query, gallery) pair of lists.

    Attributes:
        q_pids: (Q,) int64 query identities.
        g_pids: (G,) int64 gallery identities.
        q_camids: (Q,) int64 query cameras, as the rule should compare them.
        g_camids: (G,) int64 gallery cameras.
    """

    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


@dataclass(frozen=True)
class EvalProtocol:
    """One evaluation setting (docs/method.md §13).

    Attributes:
        name: Metric key (``test/<name>/mAP``) and table key.
        kind: ``official``, ``diagnostic`` or ``validation`` (module notes).
        dataset: The reader it belongs to (``sysu``, ``regdb``, ``llcm``); None for settings
            every data set has.
        query_modality: Modality of every query image; None where the data set decides
            (``holdout``: its validation split).
        gallery_modality: Modality of every gallery image; None likewise.
        rule: The rank rule scoring a trial: which gallery items a query may not see, and which
            CMC (:data:`gur_lightning.metrics.functional.RANK_RULES`).
        trials: How trials are drawn (:data:`TrialDraw`).
        split: ``split(dataset, trial) -> (query, gallery)``, the data set's split builder.
        camera_per_image_when_single: When query and gallery share one camera, give each image
            a camera of its own, so that a same-identity-same-camera rule drops the query image
            itself and nothing else (the within-modality diagnostic on RegDB, one camera per
            modality).
        description: Where the setting comes from.
    """

    name: str
    kind: ProtocolKind
    dataset: str | None
    query_modality: Modality | None
    gallery_modality: Modality | None
    rule: RankRule
    trials: TrialDraw
    split: SplitBuilder
    description: str
    camera_per_image_when_single: bool = False

    def trial_values(self, dataset: VIReIDDataset) -> list[int | None]:
        """The ``trial`` arguments of :attr:`split`, in order.

        Args:
            dataset: The loaded data set.

        Returns:
            ``[0, ..., 9]`` (gallery seeds), ``[dataset.trial]`` (loaded split) or ``[None]``.

        Raises:
            ValueError: ``loaded_split`` on a data set loaded without an identity split.
        """
        if self.trials == "gallery_seeds":
            return list(range(NUM_GALLERY_TRIALS))
        if self.trials == "loaded_split":
            trial = getattr(dataset, "trial", None)
            if not isinstance(trial, int):
                raise ValueError(
                    f"protocol {self.name!r} evaluates the identity split the data set was "
                    f"loaded with, but {type(dataset).__name__} has no integer 'trial'"
                )
            return [trial]
        return [None]

    def build(
        self, dataset: VIReIDDataset, trial: int | None
    ) -> tuple[list[Sample], list[Sample]]:
        """One trial's ``(query, gallery)``, checked against the table's modalities.

        Args:
            dataset: The loaded data set.
            trial: One of :meth:`trial_values`.

        Returns:
            The query and gallery samples as the split builder lists them.

        Raises:
            ValueError: A query or gallery image of another modality than the table says.
            DatasetLayoutError: From the split builder (an empty query or gallery).
        """
        query, gallery = self.split(dataset, trial)
        for side, samples, expected in (
            ("query", query, self.query_modality),
            ("gallery", gallery, self.gallery_modality),
        ):
            found = {s.modality for s in samples}
            if expected is not None and found - {expected}:
                raise ValueError(
                    f"protocol {self.name!r}: the {side} holds {sorted(found)} images, the "
                    f"protocol table says {expected} only"
                )
        return query, gallery

    def rule_inputs(self, query: Sequence[Sample], gallery: Sequence[Sample]) -> RuleInputs:
        """The identities and cameras :attr:`rule` compares, for metrics and pictures alike.

        Args:
            query: Q query samples.
            gallery: G gallery samples.

        Returns:
            The labels; cameras are the samples' own unless
            :attr:`camera_per_image_when_single` applies, then each gallery image's camera is
            its position in ``gallery`` and a query's that of its own image there (a query
            that is not in the gallery gets a camera no gallery image has).
        """
        q_pids = np.array([s.pid for s in query], dtype=np.int64)
        g_pids = np.array([s.pid for s in gallery], dtype=np.int64)
        q_cams = np.array([s.camid for s in query], dtype=np.int64)
        g_cams = np.array([s.camid for s in gallery], dtype=np.int64)
        if self.camera_per_image_when_single and len({*q_cams.tolist(), *g_cams.tolist()}) == 1:
            g_cams = np.arange(len(gallery), dtype=np.int64)
            if [s.path for s in query] == [s.path for s in gallery]:
                q_cams = g_cams  # the diagnostic itself: every image queries all the others
            else:  # a few of the queries (the ranking pictures)
                position = {s.path: j for j, s in enumerate(gallery)}
                q_cams = np.array(
                    [position.get(s.path, -1 - i) for i, s in enumerate(query)], dtype=np.int64
                )
        return RuleInputs(q_pids, g_pids, q_cams, g_cams)


def _test_split(
    dataset: VIReIDDataset, trial: int | None, **kwargs: Any
) -> tuple[list[Sample], list[Sample]]:
    return dataset.test_split(**kwargs, trial=trial)


def _within(
    modality: Modality, dataset: VIReIDDataset, trial: int | None
) -> tuple[list[Sample], list[Sample]]:
    samples = dataset.test_samples(modality)
    return samples, samples


def _validation(dataset: VIReIDDataset, trial: int | None) -> tuple[list[Sample], list[Sample]]:
    return dataset.validation_split(trial)


def _official(
    name: str,
    *,
    dataset: str,
    query: Modality,
    gallery: Modality,
    rule: str,
    trials: TrialDraw,
    test_split: dict[str, Any],
    description: str,
) -> EvalProtocol:
    """An official protocol: ``dataset.test_split(**test_split, trial=t)`` per trial."""
    return EvalProtocol(
        name=name,
        kind="official",
        dataset=dataset,
        query_modality=query,
        gallery_modality=gallery,
        rule=RANK_RULES[rule],
        trials=trials,
        split=partial(_test_split, **test_split),
        description=description,
    )


def _within_modality(modality: Modality) -> EvalProtocol:
    return EvalProtocol(
        name=f"within_{modality}",
        kind="diagnostic",
        dataset=None,
        query_modality=modality,
        gallery_modality=modality,
        rule=RANK_RULES["market"],
        trials="once",
        split=partial(_within, modality),
        description=(
            f"Every {modality} test image queries all the others, Market-style: same identity "
            "in the same camera removed, with a single camera only the query itself "
            "(docs/method.md §13.4; logged only by the reference). It separates 'the network "
            "does not tell people apart' from 'it does, but not across the modality gap'."
        ),
        camera_per_image_when_single=True,
    )


_TABLE: tuple[EvalProtocol, ...] = (
    _official(
        "sysu_all",
        dataset="sysu",
        query="infrared",
        gallery="visible",
        rule="sysu",
        trials="gallery_seeds",
        test_split={"mode": "all"},
        description=(
            "SYSU-MM01 all-search: infrared queries of cameras 3 and 6, one visible image per "
            "identity and camera 1, 2, 4, 5 (docs/method.md §13.2)."
        ),
    ),
    _official(
        "sysu_indoor",
        dataset="sysu",
        query="infrared",
        gallery="visible",
        rule="sysu",
        trials="gallery_seeds",
        test_split={"mode": "indoor"},
        description=(
            "SYSU-MM01 indoor-search: the same queries, gallery cameras 1 and 2 (docs/method.md "
            "§13.2)."
        ),
    ),
    _official(
        "regdb_v2t",
        dataset="regdb",
        query="visible",
        gallery="infrared",
        rule="regdb",
        trials="loaded_split",
        test_split={"direction": "v2t"},
        description=(
            "RegDB visible to thermal on the loaded split's test lists (docs/method.md §13.3)."
        ),
    ),
    _official(
        "regdb_t2v",
        dataset="regdb",
        query="infrared",
        gallery="visible",
        rule="regdb",
        trials="loaded_split",
        test_split={"direction": "t2v"},
        description=(
            "RegDB thermal to visible on the loaded split's test lists (docs/method.md §13.3)."
        ),
    ),
    _official(
        "llcm_v2i",
        dataset="llcm",
        query="visible",
        gallery="infrared",
        rule="llcm",
        trials="gallery_seeds",
        test_split={"direction": "v2i"},
        description=(
            "LLCM visible to infrared: every visible test image, one infrared image per identity "
            "and camera, DEEN's eval_llcm."
        ),
    ),
    _official(
        "llcm_i2v",
        dataset="llcm",
        query="infrared",
        gallery="visible",
        rule="llcm",
        trials="gallery_seeds",
        test_split={"direction": "i2v"},
        description=("LLCM infrared to visible, as llcm_v2i the other way round."),
    ),
    _within_modality("visible"),
    _within_modality("infrared"),
    EvalProtocol(
        name="holdout",
        kind="validation",
        dataset=None,
        query_modality=None,
        gallery_modality=None,
        # The whole gallery, standard CMC, on every data set: validation figures have always
        # been scored so, and stay comparable across runs. The SYSU-MM01 and LLCM removal
        # rules are not applied to the held-out identities.
        rule=RANK_RULES["regdb"],
        trials="once",
        split=_validation,
        description=(
            "Model selection on held-out identities (docs/architecture.md §11.7): the data "
            "set's validation split (SYSU-MM01 and LLCM infrared to visible, RegDB visible to "
            "thermal), nothing removed, standard CMC."
        ),
    ),
)

#: Every evaluation setting by name, in table order (official protocols of each data set in
#: their reporting order, then the diagnostics, then validation).
PROTOCOLS: dict[str, EvalProtocol] = {p.name: p for p in _TABLE}


def get_protocol(name: str) -> EvalProtocol:
    """The table entry of a protocol name.

    Args:
        name: A key of :data:`PROTOCOLS` (``sysu_all``, ``regdb_v2t``, ``within_visible``...).

    Returns:
        The entry.

    Raises:
        UnknownProtocolError: The name is not in the table (the message lists the known ones).
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UnknownProtocolError(
            f"unknown evaluation protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}"
        ) from None


def official_protocols(dataset: str) -> list[EvalProtocol]:
    """The official protocols of a data set, in reporting order.

    Args:
        dataset: A reader name (``sysu``, ``regdb``, ``llcm``).

    Returns:
        Its entries; the first is the one the reference selects its model on.

    Raises:
        UnknownProtocolError: The table has no official protocol for that data set.
    """
    found = [p for p in _TABLE if p.kind == "official" and p.dataset == dataset]
    if not found:
        covered = sorted({p.dataset for p in _TABLE if p.dataset is not None})
        raise UnknownProtocolError(
            f"no official evaluation protocol for data set {dataset!r}; the protocol table "
            f"covers {', '.join(covered)}"
        )
    return found


def diagnostic_protocols() -> list[EvalProtocol]:
    """The within-modality diagnostics (docs/method.md §13.4), every data set's."""
    return [p for p in _TABLE if p.kind == "diagnostic"]
