"""The within-modality diagnostic (docs/method.md §13.4) against hand-computed rankings."""

from __future__ import annotations

import math

import pytest
import torch

from gur_lightning.data.samples import Sample
from gur_lightning.evaluation import evaluate_splits, protocol_splits


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
    """Only what the diagnostic needs: no official protocol, the test images per modality."""

    def protocols(self) -> list:
        return []

    def test_samples(self, modality: str) -> list[Sample]:
        return [s for s, _ in (VISIBLE if modality == "visible" else INFRARED)]


def _featurize(samples):
    table = {s.path: f for s, f in VISIBLE + INFRARED}
    return torch.tensor([table[s.path] for s in samples])


def test_within_modality_rankings_by_hand():
    splits = protocol_splits(_FakeDataset(), within_modality=True)
    assert sorted(splits) == ["within_infrared", "within_visible"]
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
    assert protocol_splits(_FakeDataset()) == {}
