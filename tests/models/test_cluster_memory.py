"""ClusterMemory: storage, logits and the official momentum rule (docs/method.md §6.1, §18.4.3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gur_lightning.models.memory import ClusterMemory


def reference_mean_update(memory: torch.Tensor, feats: torch.Tensor, labels, m: float):
    """The reference CM backward, literally: one sample after another, renormalise each time."""
    memory = memory.clone()
    q = F.normalize(feats.float(), dim=1)
    for x, y in zip(q, labels.tolist(), strict=True):
        memory[y] = m * memory[y] + (1 - m) * x
        memory[y] = memory[y] / memory[y].norm()
    return memory


def reference_hard_update(memory: torch.Tensor, feats: torch.Tensor, labels, m: float):
    """The reference CM_Hard: per class the least similar sample (first on ties) to the row."""
    memory = memory.clone()
    q = F.normalize(feats.float(), dim=1)
    groups: dict[int, list[torch.Tensor]] = {}
    for x, y in zip(q, labels.tolist(), strict=True):
        groups.setdefault(y, []).append(x)
    for y, xs in groups.items():
        sims = [float(x @ memory[y]) for x in xs]
        hard = xs[sims.index(min(sims))]
        memory[y] = m * memory[y] + (1 - m) * hard
        memory[y] = memory[y] / memory[y].norm()
    return memory


def test_reset_stores_unit_fp32_rows_and_copies():
    centroids = torch.tensor([[3.0, 4.0], [0.0, -2.0]], dtype=torch.float64)
    mem = ClusterMemory(centroids)
    assert mem.features.dtype == torch.float32
    torch.testing.assert_close(mem.features, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    centroids[0, 0] = 100.0  # the memory must not alias its input
    assert mem.features[0, 0] == pytest.approx(0.6)
    assert mem.num_clusters == 2 and mem.dim == 2


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3), "expected centroids"),
        (torch.zeros(0, 4), "expected centroids"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), r"rows \[1\] are all zero"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
    ],
)
def test_reset_rejects_bad_centroids(bad, match):
    with pytest.raises(ValueError, match=match):
        ClusterMemory(bad)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        ClusterMemory(temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        ClusterMemory(momentum=1.0)
    with pytest.raises(ValueError, match="update_mode"):
        ClusterMemory(update_mode="median")
    with pytest.raises(RuntimeError, match="reset"):
        ClusterMemory().logits(torch.randn(2, 3))


def test_logits_match_hand_computation():
    mem = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), temperature=0.05)
    f = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.0, s], [0.6, 0.8, 1.4 * s]]) / 0.05
    torch.testing.assert_close(mem.logits(f), expected)


def test_logits_stay_fp32_under_bf16_autocast_and_memory_gets_no_gradient():
    torch.manual_seed(0)
    mem = ClusterMemory(torch.randn(5, 8))
    before = mem.features.clone()
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = x @ w  # bf16 under autocast
        assert f.dtype == torch.bfloat16
        logits = mem.logits(f)
    assert logits.dtype == torch.float32
    assert mem.features.dtype == torch.float32
    logits.logsumexp(1).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    assert not mem.features.requires_grad and mem.features.grad is None
    assert torch.equal(mem.features, before)


def test_single_sample_update_is_the_closed_form():
    torch.manual_seed(1)
    mem = ClusterMemory(torch.randn(3, 6), momentum=0.3)
    m0 = mem.features.clone()
    f = torch.randn(1, 6) * 5
    mem.update(f, torch.tensor([1]))
    q = f[0] / f[0].norm()
    row = 0.3 * m0[1] + 0.7 * q
    torch.testing.assert_close(mem.features[1], row / row.norm())
    # Rows of classes absent from the batch are untouched, bit for bit.
    assert torch.equal(mem.features[[0, 2]], m0[[0, 2]])


@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.9])
def test_mean_update_equals_sequential_per_sample_loop(momentum):
    torch.manual_seed(2)
    k, d, n = 7, 16, 60
    mem = ClusterMemory(torch.randn(k, d), momentum=momentum)
    m0 = mem.features.clone()
    feats = torch.randn(n, d) * 3
    labels = torch.randint(0, k - 1, (n,))  # class k-1 never appears
    mem.update(feats, labels)
    expected = reference_mean_update(m0, feats, labels, momentum)
    torch.testing.assert_close(mem.features, expected, rtol=0, atol=2e-6)
    assert torch.equal(mem.features[k - 1], m0[k - 1])
    torch.testing.assert_close(mem.features.norm(dim=1), torch.ones(k))


def test_mean_update_depends_on_the_order_within_a_class():
    # The rule is not a plain mean: reversing the batch order changes the result, and the
    # implementation must follow the batch order (this guards against an order-free shortcut).
    torch.manual_seed(3)
    mem_a = ClusterMemory(torch.randn(2, 4))
    m0 = mem_a.features.clone()
    mem_b = ClusterMemory(m0)
    feats = torch.randn(5, 4)
    labels = torch.zeros(5, dtype=torch.long)
    mem_a.update(feats, labels)
    mem_b.update(feats.flip(0), labels)
    assert not torch.allclose(mem_a.features[0], mem_b.features[0], atol=1e-3)
    torch.testing.assert_close(
        mem_b.features, reference_mean_update(m0, feats.flip(0), labels, 0.1), rtol=0, atol=2e-6
    )


def test_row_after_one_step_is_close_to_the_last_sample():
    # docs/method.md §18.4.3: with m = 0.1 the row is dominated by the class's last sample.
    torch.manual_seed(4)
    d = 64
    mem = ClusterMemory(torch.randn(3, d), momentum=0.1)
    feats = torch.randn(16, d)
    labels = torch.tensor([0, 1, 2, 0] * 4)
    mem.update(feats, labels)
    q = F.normalize(feats, dim=1)
    for y in range(3):
        last = q[(labels == y).nonzero().max()]
        assert float(mem.features[y] @ last) > 0.9


def test_hard_update_equals_reference_loop():
    torch.manual_seed(5)
    k, d, n = 5, 12, 40
    mem = ClusterMemory(torch.randn(k, d), momentum=0.2, update_mode="hard")
    m0 = mem.features.clone()
    feats = torch.randn(n, d)
    labels = torch.randint(0, k, (n,))
    mem.update(feats, labels)
    torch.testing.assert_close(
        mem.features, reference_hard_update(m0, feats, labels, 0.2), rtol=0, atol=2e-6
    )


def test_hard_update_picks_the_first_of_tied_samples():
    mem = ClusterMemory(torch.tensor([[1.0, 0.0, 0.0]]), momentum=0.5, update_mode="hard")
    feats = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    mem.update(feats, torch.zeros(3, dtype=torch.long))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(mem.features[0], torch.tensor([s, s, 0.0]))


def test_update_is_out_of_place_so_saved_or_shared_tensors_are_untouched():
    torch.manual_seed(7)
    mem = ClusterMemory(torch.randn(3, 4))
    old = mem.features
    snapshot = old.clone()
    f = torch.randn(2, 4, requires_grad=True)
    logits = mem.logits(f)  # saves the memory tensor for backward
    mem.update(f.detach(), torch.tensor([0, 2]))
    logits.sum().backward()  # would fail with an in-place update (version counter)
    assert torch.equal(old, snapshot)
    assert not torch.equal(mem.features, snapshot)


def test_update_validates_labels():
    mem = ClusterMemory(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        mem.update(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="outliers"):
        mem.update(torch.randn(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="labels"):
        mem.update(torch.randn(2, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="integers"):
        mem.update(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        mem.update(torch.randn(2, 5), torch.tensor([0, 1]))
    mem.update(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))  # empty batch: no-op


def test_update_under_autocast_is_fp32():
    torch.manual_seed(6)
    mem = ClusterMemory(torch.randn(4, 8))
    m0 = mem.features.clone()
    feats = torch.randn(10, 8).bfloat16()
    labels = torch.randint(0, 4, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mem.update(feats, labels)
    assert mem.features.dtype == torch.float32
    torch.testing.assert_close(
        mem.features, reference_mean_update(m0, feats.float(), labels, 0.1), rtol=0, atol=2e-6
    )
