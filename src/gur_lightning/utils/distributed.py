"""Collective helpers that behave the same with one process and under DDP.

Every helper has a world = 1 fast path that needs no process group, so library code calls them
unconditionally. Under DDP they use ``torch.distributed`` directly (not Lightning's
``all_gather``, which adds a world dimension only when world > 1; docs/architecture.md §10.4).

* :func:`gather_tensors` concatenates per-rank tensors in rank order (memory updates,
  docs/architecture.md §11.5.4): the order is fixed, so every rank applies the same
  update sequence.
* :func:`gather_by_index` assembles features extracted over sharded, possibly uneven
  loaders into one ``(total, D)`` matrix (docs/architecture.md §11.5.1).
* :func:`broadcast_object` / :func:`broadcast_result` share rank 0's results (clustering on
  rank 0 only, docs/architecture.md §11.5.2); the latter turns an exception on rank 0 into an error
  on every rank instead of a hang.
* :func:`average_buffers` makes the module buffers (BatchNorm running statistics) identical on
  every rank when DDP does not (``broadcast_buffers=False`` without ``SyncBatchNorm``, e.g. on
  CPU where ``SyncBatchNorm`` is unavailable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

__all__ = [
    "RemoteError",
    "average_buffers",
    "broadcast_buffers",
    "broadcast_object",
    "broadcast_result",
    "gather_by_index",
    "gather_tensors",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_rank_zero",
]


class RemoteError(RuntimeError):
    """Raised on every rank when the source rank of :func:`broadcast_result` failed."""


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """Number of ranks (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return get_rank() == 0


def _gather_lengths(n: int, device: torch.device) -> list[int]:
    """All-gather one integer per rank (the local row count), in rank order."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(get_world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def gather_tensors(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order, on every rank.

    Ranks may hold different numbers of rows: the rows are padded to the largest count before
    ``all_gather`` (which requires equal shapes, docs/architecture.md §10.4) and
    trimmed afterwards.

    Args:
        tensor: ``(n_r, *S)`` on this rank; trailing shape ``S`` and dtype equal on all ranks.

    Returns:
        ``(sum_r n_r, *S)``: rank 0's rows, then rank 1's, ... The input itself when world = 1.
    """
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    lengths = _gather_lengths(tensor.shape[0], tensor.device)
    longest = max(lengths)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    parts = [torch.empty_like(tensor) for _ in lengths]
    dist.all_gather(parts, tensor)
    return torch.cat([part[:n] for part, n in zip(parts, lengths, strict=True)])


def gather_by_index(features: Tensor, index: Tensor, total: int) -> Tensor:
    """Assemble features extracted by several ranks into one matrix ordered by sample index.

    Each rank passes the rows it extracted and their global sample indices. Rows are padded to
    a common length with index −1 (dropped on arrival), gathered, and scattered by index, so
    the result is the same on every rank and independent of how the samples were sharded
    (docs/architecture.md §11.5.1). Duplicated indices (a padded sampler) are allowed; they are
    expected to carry the same features and the last one in rank order wins.

    Args:
        features: ``(n, D)`` rows extracted on this rank (any floating dtype, kept).
        index: ``(n,)`` integer global indices in ``[0, total)``.
        total: Number of samples in the full set.

    Returns:
        ``(total, D)`` features, row ``i`` holding sample ``i``.

    Raises:
        ValueError: If shapes disagree, an index is out of range, or some sample in
            ``[0, total)`` was extracted by no rank.
    """
    if features.ndim != 2 or index.ndim != 1 or index.shape[0] != features.shape[0]:
        raise ValueError(
            "gather_by_index: expected features (n, D) and index (n,), got "
            f"{tuple(features.shape)} and {tuple(index.shape)}"
        )
    index = index.to(device=features.device, dtype=torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= total):
        raise ValueError(
            f"gather_by_index: indices must lie in [0, {total}), got range "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    if is_distributed():
        lengths = _gather_lengths(features.shape[0], features.device)
        longest = max(lengths)
        pad = longest - features.shape[0]
        if pad:
            features = torch.cat([features, features.new_zeros((pad, features.shape[1]))])
            index = torch.cat([index, index.new_full((pad,), -1)])
        feat_parts = [torch.empty_like(features) for _ in lengths]
        index_parts = [torch.empty_like(index) for _ in lengths]
        dist.all_gather(feat_parts, features.contiguous())
        dist.all_gather(index_parts, index.contiguous())
        features = torch.cat(feat_parts)
        index = torch.cat(index_parts)
        keep = index >= 0
        features, index = features[keep], index[keep]
    out = features.new_zeros((total, features.shape[1]))
    out[index] = features
    seen = torch.zeros(total, dtype=torch.bool, device=features.device)
    seen[index] = True
    if not bool(seen.all()):
        missing = (~seen).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"gather_by_index: {int((~seen).sum())} of {total} samples were extracted by no "
            f"rank (first missing indices: {missing}); is the sampler sharding every sample?"
        )
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Send a picklable object from rank ``src`` to every rank.

    Args:
        obj: The object on rank ``src`` (ignored on the other ranks).
        src: Source rank.

    Returns:
        Rank ``src``'s object, on every rank; ``obj`` itself when world = 1.
    """
    if not is_distributed():
        return obj
    box: list[Any] = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_result(fn: Callable[[], T], src: int = 0) -> T:
    """Run ``fn`` on rank ``src`` only and share its result, or its failure, with every rank.

    If ``fn`` raises on the source rank, the other ranks raise :class:`RemoteError` instead of
    waiting in a collective until the process-group timeout (docs/architecture.md §10.5).

    Args:
        fn: A zero-argument callable returning a picklable result.
        src: The rank that runs ``fn``.

    Returns:
        ``fn()``'s result on every rank.

    Raises:
        RemoteError: On the non-source ranks when ``fn`` failed on the source rank (the source
            rank re-raises the original exception).
    """
    if not is_distributed():
        return fn()
    payload: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if get_rank() == src:
        try:
            payload = (True, fn())
        except Exception as exc:  # shared with the other ranks, then re-raised below
            error = exc
            payload = (False, f"{type(exc).__name__}: {exc}")
    ok, value = broadcast_object(payload, src=src)
    if error is not None:
        raise error
    if not ok:
        raise RemoteError(f"rank {src} failed: {value}")
    return value


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average ``module``'s floating-point buffers over the ranks, in place; copy the others.

    With ``broadcast_buffers=False`` and no ``SyncBatchNorm`` (CPU DDP), each rank updates its
    BatchNorm running statistics from its own batches, so the ranks' eval-mode models drift
    apart. The running mean is a linear recursion, so the average of the ranks' running means
    is the running mean of the global batches' means (per-rank batches are equal in size); the
    averaged variances leave out the spread of the per-rank means, a small bias. Integer
    buffers (``num_batches_tracked``) are equal on every rank anyway and are copied from rank 0.
    Buffers are flattened per dtype and device into one collective each.

    Args:
        module: The module whose buffers are synchronised (the LightningModule, not the DDP
            wrapper; they share the tensors). No-op when world = 1.
    """
    if not is_distributed():
        return
    world = get_world_size()

    def average(flat: Tensor) -> None:
        if flat.dtype.is_floating_point:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
        else:
            dist.broadcast(flat, src=0)

    _sync_buffers(module, average)


def _sync_buffers(module: nn.Module, collective: Callable[[Tensor], object]) -> None:
    """Run ``collective`` in place on the module's buffers, flattened per dtype and device."""
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for buf in module.buffers():
        groups.setdefault((buf.dtype, buf.device), []).append(buf)
    for bufs in groups.values():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        collective(flat)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` from rank ``src`` to the other ranks, in place.

    With DataParallel-exact BatchNorm (``model.bn_replicas > 1``) the running statistics are
    those of virtual replica 0, which lives on rank 0: the other ranks' statistics come from
    their own replicas and are replaced, as DataParallel discards its other replicas' updates.
    Buffers are flattened per dtype and device into one collective each.

    Args:
        module: The module whose buffers are synchronised. No-op when world = 1.
        src: The rank whose buffers are kept.
    """
    if not is_distributed():
        return
    _sync_buffers(module, lambda flat: dist.broadcast(flat, src=src))
