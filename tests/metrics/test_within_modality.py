"""The within-modality diagnostic (docs/method.md §13.4) against hand-computed rankings."""

from __future__ import annotations

import math

import pytest
import torch

from gur_lightning.data.samples import Sample
from gur_lightning.evaluation import evaluate_splits, protocol_splits
from gur_lightning.visualize import rank_gallery


def _unit(*xy: float) -> list[float]:
    norm = math.hypot(*xy)
    return [v / norm for v in xy]


#: Visible: two cameras. Infrared: one camera (RegDB-like), so only the query itself is removed.
VISIBLE = [
    (Sample("v0", 1, 1, "visible"), _unit(1.0, 0.0)),
    (Sample("v1", 1, 1, "visible"), _unit(1.0, 0.0)),  # same id, same camera as v0: not a match
    (Sample("v2", 1, 2, "visible"), _unit(0.0, 1.0)),
    (Sample("v3", 2, 2, "visible"), _unit(0.9, math.sqrt(1 - 0.81))),
]
INFRARED = [
    (Sample("i0", 1, 3, "infrared"), _unit(1.0, 0.0)),
    (Sample("i1", 1, 3, "infrared"), _unit(0.8, 0.6)),
    (Sample("i2", 2, 3, "infrared"), _unit(0.6, 0.8)),
]


class _FakeDataset:
    """RegDB-like: its official protocols pair the two lists; the test images per modality."""

    name = "regdb"
    trial = 1

    def test_split(self, direction: str = "v2t", trial: int | None = None):
        visible, infrared = self.test_samples("visible"), self.test_samples("infrared")
        return (visible, infrared) if direction == "v2t" else (infrared, visible)

    def test_samples(self, modality: str) -> list[Sample]:
        return [s for s, _ in (VISIBLE if modality == "visible" else INFRARED)]


def _featurize(samples):
    table = {s.path: f for s, f in VISIBLE + INFRARED}
    return torch.tensor([table[s.path] for s in samples])


def test_within_modality_rankings_by_hand():
    splits = protocol_splits(_FakeDataset(), within_modality=True)
    assert list(splits) == ["regdb_v2t", "regdb_t2v", "within_visible", "within_infrared"]
    m = evaluate_splits(splits, _featurize)
    # Visible. v0 and v1: v1 / v0 (same camera) removed; ranking v3 (other id), v2 -> AP 1/2.
    # v2: itself removed; ranking v3, v0, v1 -> AP (1/2 + 2/3) / 2. v3: no other image of id 2.
    assert m["test/within_visible/rank1"] == pytest.approx(0.0)
    assert m["test/within_visible/mAP"] == pytest.approx((0.5 + 0.5 + (0.5 + 2 / 3) / 2) / 3)
    # Infrared, one camera: only the query is removed. i0: i1 (same id) first -> AP 1.
    # i1: i2 (other id, 0.96) before i0 (0.8) -> AP 1/2. i2: no other image of id 2.
    assert m["test/within_infrared/rank1"] == pytest.approx(0.5)
    assert m["test/within_infrared/mAP"] == pytest.approx(0.75)


def test_within_modality_is_off_by_default():
    assert list(protocol_splits(_FakeDataset())) == ["regdb_v2t", "regdb_t2v"]


def test_ranking_pictures_use_the_same_rule_on_a_few_queries():
    # rank_gallery with the diagnostic's entry: the one-camera infrared query i1 does not see
    # itself, and sees i2 (other id, closer) before i0, as the metric ranked it above.
    feats = _featurize([s for s, _ in INFRARED])
    (row,) = rank_gallery(
        feats[1:2], feats, [INFRARED[1][0]], [s for s, _ in INFRARED], protocol="within_infrared"
    )
    assert [s.path for s in row.gallery] == ["i2", "i0"]
    assert row.correct == (False, True)
    # Two visible cameras: v0 loses v1 (same id, same camera) and itself, not v2.
    visible = [s for s, _ in VISIBLE]
    (row,) = rank_gallery(
        _featurize(visible)[:1],
        _featurize(visible),
        visible[:1],
        visible,
        protocol="within_visible",
    )
    assert [s.path for s in row.gallery] == ["v3", "v2"]
