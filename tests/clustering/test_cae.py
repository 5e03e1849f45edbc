import math

import numpy as np
import pytest
import torch

from gur_lightning.clustering import cae_embedding, legacy_block_bounds


def _softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [v / sum(e) for v in e]


def test_hand_computed_two_domains():
    feats = torch.tensor([[3.0, 4.0], [0.0, -2.0]])  # normalised inside: (0.6, 0.8), (0, -1)
    m1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m2 = torch.tensor([[0.0, -5.0]])  # re-normalised inside: (0, -1)
    out = cae_embedding(feats, [m1, m2], temperature=0.5)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    expect_row0 = _softmax([0.6 / 0.5, 0.8 / 0.5]) + [1.0]
    expect_row1 = _softmax([0.0, -1.0 / 0.5]) + [1.0]
    np.testing.assert_allclose(out.numpy(), [expect_row0, expect_row1], rtol=1e-6)


def test_blocks_sum_to_one_for_any_number_of_cameras():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(50, 16, generator=g)
    mems = [torch.randn(k, 16, generator=g) for k in (3, 7, 1, 5, 2)]
    out = cae_embedding(feats, mems)
    assert out.shape == (50, 18)
    start = 0
    for m in mems:
        block = out[:, start : start + m.shape[0]]
        torch.testing.assert_close(block.sum(1), torch.ones(50))
        start += m.shape[0]


def test_legacy_slicing_reproduces_the_reference_bug():
    # Cumulative sizes [2, 3, 5] used as sizes: blocks [0, 2), [2, 5), [5, 10) -> empty.
    assert legacy_block_bounds([2, 1, 2]) == [(0, 2), (2, 5), (5, 5)]
    # Four cameras as in SYSU stage 2: the 4th block is usually empty (docs/method.md §8.1).
    assert legacy_block_bounds([3, 4, 2, 5]) == [(0, 3), (3, 10), (10, 14), (14, 14)]
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(4, 6, generator=g)
    mems = [torch.randn(k, 6, generator=g) for k in (2, 1, 2)]
    out = cae_embedding(feats, mems, temperature=0.05, legacy_slicing=True)
    bank = torch.nn.functional.normalize(torch.cat(mems), dim=1)
    u = torch.nn.functional.normalize(feats, dim=1)
    logits = (u @ bank.t() / 0.05).tolist()
    expect = [_softmax(row[0:2]) + _softmax(row[2:5]) for row in logits]
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-5, atol=1e-7)
    correct = cae_embedding(feats, mems, temperature=0.05)
    assert not torch.allclose(out, correct)


def test_legacy_equals_correct_for_two_domains():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(10, 8, generator=g)
    mems = [torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)]
    torch.testing.assert_close(
        cae_embedding(feats, mems, legacy_slicing=True), cae_embedding(feats, mems)
    )


def test_empty_memory_gives_empty_block():
    out = cae_embedding(torch.randn(3, 4), [torch.randn(2, 4), torch.zeros(0, 4)])
    assert out.shape == (3, 2)


@pytest.mark.parametrize(
    ("mems", "kwargs", "match"),
    [
        ([], {}, "at least one"),
        ([torch.randn(3, 5)], {}, r"\(K, 4\)"),
        ([torch.randn(3, 4)], {"temperature": 0.0}, "temperature"),
        ([torch.full((3, 4), float("nan"))], {}, "NaN"),
        ([torch.randn(3, 4, device="meta")], {}, "device|on meta"),
    ],
)
def test_bad_prototypes(mems, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cae_embedding(torch.randn(5, 4), mems, **kwargs)
