import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gur_lightning.clustering import cmlu, propagate_labels, smooth_labels


def _unit(*v):
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def _dense_propagation(xr, xi, li, k, temperature=1.0):
    a = F.normalize(xr, dim=1) @ F.normalize(xi, dim=1).t()
    w = torch.softmax(a / temperature, dim=1)
    mask = torch.zeros_like(w).scatter_(1, torch.topk(w, k, dim=1).indices, 1.0)
    y = F.one_hot(torch.as_tensor(li) + 1, int(max(li)) + 2).float()
    return torch.argmax((w * mask) @ y, dim=1) - 1


def _dense_smoothing(x, labels, k):
    u = F.normalize(x, dim=1)
    g = u @ u.t()
    s = torch.zeros_like(g).scatter_(1, torch.topk(g, k, dim=1).indices, 1.0)
    y = F.one_hot(torch.as_tensor(labels) + 1, int(max(labels)) + 2).float()
    return torch.argmax(s @ y, dim=1) - 1


def test_propagation_hand_case():
    xi = torch.stack([_unit(1, 0), _unit(0.8, 0.6), _unit(0, 1), _unit(-1, 0)])
    li = torch.tensor([0, 0, 1, -1])
    xr = torch.stack([_unit(1, 0.1), _unit(0, 1), _unit(-1, 0.05)])
    # Top-2 IR neighbours: v0 -> {i0, i1} both cluster 0; v1 -> i2 (cos 1, cluster 1) beats
    # i1 (cos 0.6, cluster 0); v2 -> i3 (outlier, cos ~1) beats i2 (cos ~0.05): dropped.
    out = propagate_labels(xr, xi, li, topk=2)
    assert out.dtype == torch.int64
    assert out.tolist() == [0, 1, -1]


def test_propagation_weights_by_exp_cosine_and_temperature():
    s = math.sqrt(0.96)
    xi = torch.tensor([[1.0, 0.0], [0.2, s], [0.2, -s], [-1.0, 0.0]])
    li = torch.tensor([1, 0, 0, 2])
    xr = torch.tensor([[1.0, 0.0]])
    # Top 3 = i0 (cos 1, cluster 1) and two cluster-0 points at cos 0.2:
    # e^1 = 2.72 > 2 e^0.2 = 2.44, so cluster 1 wins although cluster 0 has the majority...
    assert propagate_labels(xr, xi, li, topk=3).tolist() == [1]
    # ...while at temperature 5, e^0.2 = 1.22 < 2 e^0.04 = 2.08.
    assert propagate_labels(xr, xi, li, topk=3, temperature=5.0).tolist() == [0]


def test_propagation_toy_case_reproduces_infrared_labels():
    # docs/method.md §18.4.5: visible features = infrared features + noise.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=g)
    li = torch.arange(10).repeat_interleave(25)
    xi = centres[li] + 0.3 * torch.randn(250, 64, generator=g)
    xr = xi + 0.05 * torch.randn(250, 64, generator=g)
    assert torch.equal(propagate_labels(xr, xi, li, topk=20), li)
    assert torch.equal(cmlu(xr, xi, li, topk=20, smooth=True), li)


def test_propagation_chunked_equals_dense_formula():
    g = torch.Generator().manual_seed(1)
    xi = torch.randn(300, 32, generator=g)
    xr = torch.randn(170, 32, generator=g)
    li = torch.randint(-1, 12, (300,), generator=g)
    expected = _dense_propagation(xr, xi, li, 10)
    assert torch.equal(propagate_labels(xr, xi, li, topk=10, chunk_size=7), expected)
    assert torch.equal(propagate_labels(xr, xi, li, topk=10), expected)
    assert len(set(expected.tolist())) > 5


def test_smoothing_hand_case_and_ties():
    x = torch.stack([_unit(1, 0), _unit(0.9, 0.436), _unit(0, 1), _unit(0.1, 1)])
    # top-2 incl. self: 0 -> {0, 1}, 1 -> {1, 0}, 2 -> {2, 3}, 3 -> {3, 2}
    # labels (3, 1, -1, 5): every vote is a 1-1 tie, won by the lowest column (-1 first).
    out = smooth_labels(x, torch.tensor([3, 1, -1, 5]), topk=2)
    assert out.tolist() == [1, 1, -1, -1]
    # top-3: 0 -> {0, 1, 3} (cos(0,3) = 0.0995 > cos(0,2) = 0), 1 -> {1, 0, 3},
    # 2 -> {2, 3, 1}, 3 -> {3, 2, 1}: votes (3,3,5) (3,3,5) (-1,5,3) (5,-1,3) -> 3, 3, -1, -1.
    out3 = smooth_labels(x, torch.tensor([3, 3, -1, 5]), topk=3)
    assert out3.tolist() == [3, 3, -1, -1]


def test_smoothing_chunked_equals_dense_formula():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(260, 16, generator=g)
    labels = torch.randint(-1, 6, (260,), generator=g)
    expected = _dense_smoothing(x, labels, 20)
    assert torch.equal(smooth_labels(x, labels, topk=20, chunk_size=9), expected)
    assert not torch.equal(expected, labels)


def test_cmlu_composes_both_steps():
    g = torch.Generator().manual_seed(3)
    xi = torch.randn(120, 16, generator=g)
    xr = torch.randn(90, 16, generator=g)
    li = torch.randint(-1, 8, (120,), generator=g)
    lp = propagate_labels(xr, xi, li, topk=10)
    assert torch.equal(cmlu(xr, xi, li, topk=10), lp)
    assert torch.equal(cmlu(xr, xi, li, topk=10, smooth=True), smooth_labels(xr, lp, topk=10))
    assert torch.equal(
        cmlu(xr, xi, li, topk=10, smooth=True, smooth_topk=5), smooth_labels(xr, lp, topk=5)
    )


def test_topk_larger_than_infrared_set_and_all_outliers():
    xi = torch.randn(3, 4)
    xr = torch.randn(5, 4)
    assert propagate_labels(xr, xi, torch.tensor([-1, -1, -1]), topk=20).tolist() == [-1] * 5
    np.testing.assert_array_equal(
        propagate_labels(xr, xi, np.array([2, 2, 2]), topk=20).numpy(), [2] * 5
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.randn(5, 4), torch.randn(6, 4), torch.zeros(5, dtype=torch.long)), "6"),
        ((torch.randn(5, 4), torch.randn(6, 3), torch.zeros(6, dtype=torch.long)), "dimension"),
        ((torch.randn(5, 4), torch.randn(6, 4), torch.full((6,), -2)), "-1"),
        ((torch.randn(5, 4), torch.randn(6, 4), torch.zeros(6) + 0.5), "integers"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        propagate_labels(*args)
    with pytest.raises(ValueError, match="topk"):
        propagate_labels(torch.randn(5, 4), torch.randn(6, 4), torch.zeros(6, dtype=int), topk=0)
