"""ADC loss: hand-computed values, view duplication and a float64 gradient check (§6.2)."""

from __future__ import annotations

import math

import pytest
import torch

from gur_lightning.models.losses import adc_loss, duplicate_views, info_nce
from gur_lightning.models.memory import ClusterMemory


def test_info_nce_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    # -log(e^2 / (e^2 + 2)) and -log(e^1 / (1 + e + e^3)), averaged.
    expected = 0.5 * (
        -math.log(math.e**2 / (math.e**2 + 2)) - math.log(math.e / (1 + math.e + math.e**3))
    )
    assert float(info_nce(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_adc_loss_weights_the_two_streams():
    lv = torch.tensor([[0.0, 0.0]])  # CE = log 2
    li = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # CE = log 4
    y = torch.tensor([1])
    loss, parts = adc_loss(lv, y, li, y, weight_visible=0.5, weight_infrared=2.0)
    assert float(parts["visible"]) == pytest.approx(math.log(2))
    assert float(parts["infrared"]) == pytest.approx(math.log(4))
    assert float(loss) == pytest.approx(0.5 * math.log(2) + 2.0 * math.log(4))
    loss, parts = adc_loss(None, None, li, y)
    assert set(parts) == {"infrared"} and float(loss) == pytest.approx(math.log(4))


def test_adc_loss_rejects_missing_inputs():
    with pytest.raises(ValueError, match="neither"):
        adc_loss(None, None, None, None)
    with pytest.raises(ValueError, match="without labels_visible"):
        adc_loss(torch.zeros(1, 2), None, None, None)


def test_duplicate_views_stacks_views_and_repeats_labels():
    v1 = torch.zeros(2, 3, 4, 2)
    v2 = torch.ones(2, 3, 4, 2)
    x, y = duplicate_views(v1, v2, torch.tensor([5, 7]))
    assert x.shape == (4, 3, 4, 2)
    assert torch.equal(x[:2], v1) and torch.equal(x[2:], v2)
    assert y.tolist() == [5, 7, 5, 7]
    with pytest.raises(ValueError, match="do not match"):
        duplicate_views(v1, v2[:1], torch.tensor([5, 7]))


def test_loss_through_memories_matches_explicit_formula():
    torch.manual_seed(0)
    mem = ClusterMemory(torch.randn(4, 6), temperature=0.05)
    f = torch.randn(3, 6)
    y = torch.tensor([0, 3, 3])
    loss, _ = adc_loss(mem.logits(f), y, None, None)
    q = f / f.norm(dim=1, keepdim=True)
    s = q @ mem.features.t() / 0.05
    expected = -(s[torch.arange(3), y] - s.logsumexp(dim=1)).mean()
    torch.testing.assert_close(loss, expected)


def test_gradcheck_float64_loss_wrt_features():
    torch.manual_seed(1)
    mem_v = ClusterMemory(torch.randn(4, 5), temperature=0.5)
    mem_i = ClusterMemory(torch.randn(3, 5), temperature=0.5)
    f_v = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    f_i = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y_v = torch.tensor([0, 1, 2, 3, 0, 1])
    y_i = torch.tensor([2, 1, 0, 2])

    def loss_fn(fv, fi):
        loss, _ = adc_loss(
            mem_v.logits(fv), y_v, mem_i.logits(fi), y_i, weight_visible=0.7, weight_infrared=1.3
        )
        return loss

    assert loss_fn(f_v, f_i).dtype == torch.float64
    assert torch.autograd.gradcheck(loss_fn, (f_v, f_i), eps=1e-6, atol=1e-6)
