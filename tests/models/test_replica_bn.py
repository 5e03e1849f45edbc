"""DataParallel-exact BatchNorm: ``bn_replicas = R`` against DataParallel simulated by hand.

The reference trained with ``nn.DataParallel`` over four GPUs and no SyncBN. The truth here is
an explicit simulation of what DataParallel does: each stream's batch split by hand into R
contiguous chunks, a deep copy of the plain network run on every chunk in train mode,
gradients summed over the copies, running statistics taken from the copy that ran chunk 0.
Everything runs in float64, so that a 1e-5 tolerance measures the method, not fp32 rounding
(BatchNorm over 2-row chunks makes fp32 gradients of the stems ~100 in size).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gur_lightning.models.backbone import DualStreamResNet
from gur_lightning.models.replica_bn import ReplicaBatchNorm, replica_count
from gur_lightning.utils.distributed import broadcast_buffers

H, W = 32, 16
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _plain(seed: int = 0) -> DualStreamResNet:
    torch.manual_seed(seed)
    net = DualStreamResNet(18, last_stride=2)
    # Non-trivial affine parameters and running statistics, so that a wrong buffer or a
    # swapped chunk shows.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    return net.double()


def _replicated(plain: DualStreamResNet, replicas: int) -> DualStreamResNet:
    net = DualStreamResNet(18, last_stride=2, bn_replicas=replicas)
    net.double().load_state_dict(plain.state_dict())
    return net


def _inputs(n_v: int, n_i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_v = torch.randn(n_v, 3, H, W, generator=g, dtype=torch.float64)
    return x_v, torch.randn(n_i, 3, H, W, generator=g, dtype=torch.float64) + 0.5


def _loss(f_v: torch.Tensor | None, f_i: torch.Tensor | None, n_total: int) -> torch.Tensor:
    """A nonlinear per-row loss, summed and divided by the global row count."""
    total = torch.zeros((), dtype=torch.float64)
    for f, weight in ((f_v, 1.0), (f_i, 2.0)):
        if f is not None:
            ramp = torch.linspace(-1, 1, f.shape[1], dtype=f.dtype)
            total = total + weight * (f.tanh() * ramp).sum()
    return total / n_total


def _dataparallel_by_hand(
    plain: DualStreamResNet,
    x_v: torch.Tensor | None,
    x_i: torch.Tensor | None,
    replicas: int,
    n_total: int,
) -> tuple[list[torch.Tensor | None], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs, summed parameter gradients and replica-0 buffers of DataParallel over R."""
    copies = [copy.deepcopy(plain).train() for _ in range(replicas)]
    chunks_v = x_v.chunk(replicas) if x_v is not None else [None] * replicas
    chunks_i = x_i.chunk(replicas) if x_i is not None else [None] * replicas
    outs_v, outs_i = [], []
    for net, c_v, c_i in zip(copies, chunks_v, chunks_i, strict=True):
        f_v, f_i = net(c_v, c_i)
        _loss(f_v, f_i, n_total).backward()
        outs_v.append(f_v)
        outs_i.append(f_i)
    # Parameters of a stem that got no input have no gradient in any copy.
    grads = {
        name: sum(dict(c.named_parameters())[name].grad for c in copies)
        for name, p in copies[0].named_parameters()
        if p.grad is not None
    }
    buffers = {name: b.clone() for name, b in copies[0].named_buffers()}
    out = [torch.cat(outs).detach() if outs[0] is not None else None for outs in (outs_v, outs_i)]
    return out, grads, buffers


def _assert_matches(net, x_v, x_i, reference, n_total):
    (ref_v, ref_i), ref_grads, ref_buffers = reference
    f_v, f_i = net(x_v, x_i)
    for got, want in ((f_v, ref_v), (f_i, ref_i)):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got.detach(), want, **TOL)
    _loss(f_v, f_i, n_total).backward()
    with_grad = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    assert with_grad.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(with_grad[name], grad, **TOL, msg=name)
    buffers = dict(net.named_buffers())
    assert buffers.keys() == ref_buffers.keys()
    for name, value in ref_buffers.items():
        torch.testing.assert_close(buffers[name], value, **TOL, msg=name)


@pytest.mark.parametrize("replicas", [1, 2, 4])
@pytest.mark.parametrize("streams", ["both", "visible", "infrared"])
def test_outputs_gradients_and_running_stats_equal_dataparallel_by_hand(replicas, streams):
    plain = _plain()
    # Visible: cat(view 1, view 2) of 4 images, as the module stacks them; infrared: 8 images.
    x_v, x_i = _inputs(8, 8, seed=replicas)
    x_v = x_v if streams != "infrared" else None
    x_i = x_i if streams != "visible" else None
    n_total = sum(x.shape[0] for x in (x_v, x_i) if x is not None)
    reference = _dataparallel_by_hand(plain, x_v, x_i, replicas, n_total)
    net = _replicated(plain, replicas).train()
    _assert_matches(net, x_v, x_i, reference, n_total)


def test_replicas_change_the_statistics_and_eval_features_use_replica_zero():
    """R = 4 differs from one BatchNorm over the whole batch (the test above could not pass by
    accident), and eval-mode features use the replica-0 running statistics."""
    plain = _plain()
    x_v, x_i = _inputs(8, 8, seed=3)
    whole = copy.deepcopy(plain).train()
    f_whole, _ = whole(x_v, x_i)
    net = _replicated(plain, 4).train()
    f_rep, _ = net(x_v, x_i)
    assert (f_whole - f_rep).abs().max() > 1e-2
    # The copy that ran chunk 0 has the same buffers: its eval features are the replica net's.
    copy0 = copy.deepcopy(plain).train()
    copy0(x_v.chunk(4)[0], x_i.chunk(4)[0])
    net.eval()
    copy0.eval()
    probe = _inputs(3, 3, seed=9)
    for a, b in zip(net(*probe), copy0(*probe), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_one_replica_is_plain_batchnorm():
    net = DualStreamResNet(18, bn_replicas=1)
    assert not any(isinstance(m, ReplicaBatchNorm) for m in net.modules())
    assert replica_count(net) == 1
    net4 = DualStreamResNet(18, bn_replicas=4)
    bns = [m for m in net4.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, ReplicaBatchNorm) for m in bns)
    assert replica_count(net4) == 4
    # Same state-dict keys and shapes: checkpoints load either way.
    a, b = net.state_dict(), net4.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def test_processes_share_the_replicas_and_bad_splits_are_refused():
    net = DualStreamResNet(18, last_stride=2, bn_replicas=4).train()
    net.set_processes(2)
    assert net.local_replicas == 2 and replica_count(net) == 2
    with pytest.raises(ValueError, match=r"bn_replicas=4 is not a multiple of the 3 training"):
        net.set_processes(3)
    x_v, x_i = _inputs(6, 8, seed=0)
    net.set_processes(1)
    with pytest.raises(ValueError, match=r"visible batch of 6 images does not split into 4"):
        net(x_v, x_i)
    with pytest.raises(ValueError, match="bn_replicas must be an integer >= 1"):
        DualStreamResNet(18, bn_replicas=0)


# ---------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        plain = _plain()
        net = _replicated(plain, 4).train()
        net.set_processes(world)
        ddp = nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)
        x_v, x_i = _inputs(8, 8, seed=11)  # the global batch, rank-major
        n_local_v, n_local_i = x_v.shape[0] // world, x_i.shape[0] // world
        mine_v = x_v[rank * n_local_v : (rank + 1) * n_local_v]
        mine_i = x_i[rank * n_local_i : (rank + 1) * n_local_i]
        f_v, f_i = ddp(mine_v, mine_i)
        # DDP averages gradients over ranks: the local loss is normalised by the local rows.
        _loss(f_v, f_i, n_local_v + n_local_i).backward()
        own_buffers = {k: b.clone() for k, b in net.named_buffers()}
        broadcast_buffers(net)
        torch.save(
            {
                "f_v": f_v.detach(),
                "f_i": f_i.detach(),
                "grads": {k: p.grad for k, p in net.named_parameters() if p.grad is not None},
                "own_buffers": own_buffers,
                "buffers": dict(net.named_buffers()),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_with_four_replicas_equals_dataparallel_by_hand(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    plain = _plain()
    x_v, x_i = _inputs(8, 8, seed=11)
    (ref_v, ref_i), ref_grads, ref_buffers = _dataparallel_by_hand(plain, x_v, x_i, 4, 16)
    torch.testing.assert_close(torch.cat([r["f_v"] for r in ranks]), ref_v, **TOL)
    torch.testing.assert_close(torch.cat([r["f_i"] for r in ranks]), ref_i, **TOL)
    for r in ranks:  # all-reduced gradients: the same on both ranks, DataParallel's sum
        for name, grad in ref_grads.items():
            torch.testing.assert_close(r["grads"][name], grad, **TOL, msg=name)
    # Rank 0 holds replica 0: its own running statistics are DataParallel's; rank 1's are not,
    # until they are broadcast from rank 0.
    for name, value in ref_buffers.items():
        torch.testing.assert_close(ranks[0]["own_buffers"][name], value, **TOL, msg=name)
        torch.testing.assert_close(ranks[1]["buffers"][name], value, **TOL, msg=name)
    assert any(
        not torch.allclose(ranks[1]["own_buffers"][k], v)
        for k, v in ref_buffers.items()
        if v.is_floating_point()
    )
