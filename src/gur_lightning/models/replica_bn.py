"""BatchNorm that normalises like ``nn.DataParallel`` over R devices, on any number of devices.

The published GUR figures were trained with ``nn.DataParallel`` on four GPUs and no SyncBN
(docs/recipes.md, "What DataParallel does to BatchNorm"). DataParallel scatters every input
tensor along the batch axis into R contiguous chunks, runs a replica of the network on each,
and keeps the in-place buffer updates of replica 0 only. So, in training mode:

* every BatchNorm layer computes its batch statistics over its replica's slice alone;
* the running mean and variance (used by every eval-mode feature: clustering and testing) are
  updated from replica 0's slice only; the other replicas' updates are discarded.

:class:`ReplicaBatchNorm` reproduces both on one device: it splits its input into
``replicas`` contiguous equal chunks, normalises each with its own statistics (the same affine
parameters), and updates the running statistics from chunk 0. The caller arranges the batch so
that each replica's rows are contiguous (see ``DualStreamResNet.forward``). Outputs and
gradients equal those of R deep copies run on the chunks with their gradients summed, which is
what DataParallel's backward computes.

Under DDP with D processes each process holds ``R / D`` consecutive replicas; the running
statistics of global replica 0 live on rank 0 and are broadcast to the other ranks before they
are used (:func:`gur_lightning.utils.distributed.broadcast_buffers`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ReplicaBatchNorm",
    "ReplicaBatchNorm1d",
    "ReplicaBatchNorm2d",
    "convert_replica_batchnorm",
    "replica_count",
    "set_replicas",
]


class ReplicaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with per-replica training statistics and replica-0 running statistics.

    Same parameters, buffers and state-dict keys as the ``nn.BatchNorm`` it replaces, so
    checkpoints load either way. In eval mode, or with ``replicas == 1``, it is exactly
    ``nn.BatchNorm``.

    Attributes:
        replicas: Virtual replicas in one forward call on this process (``R / D`` under DDP).
    """

    replicas: int = 1

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input``, per replica chunk in training mode.

        Args:
            input: ``(N, C)`` or ``(N, C, H, W)``; in training mode N must be a multiple of
                ``replicas`` (chunk ``r`` is rows ``[r N / R, (r + 1) N / R)``).

        Returns:
            A tensor of ``input``'s shape.

        Raises:
            ValueError: When N does not split into ``replicas`` equal chunks.
        """
        replicas = self.replicas
        if replicas == 1 or not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        n = input.shape[0]
        if n % replicas:
            raise ValueError(
                f"{type(self).__name__}: a batch of {n} rows does not split into "
                f"{replicas} equal replica chunks (model.bn_replicas per process)"
            )
        factor = self.momentum if self.momentum is not None else 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:
            # The replica-0 copy counts its batches like any BatchNorm; momentum None means a
            # cumulative average over those batches (nn.BatchNorm's rule).
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        size = n // replicas
        chunks = input.split(size)
        out = [
            F.batch_norm(
                chunk,
                # Only replica 0's update of the running statistics survives DataParallel.
                self.running_mean if r == 0 else None,
                self.running_var if r == 0 else None,
                self.weight,
                self.bias,
                True,
                factor,
                self.eps,
            )
            for r, chunk in enumerate(chunks)
        ]
        return torch.cat(out)


class ReplicaBatchNorm1d(ReplicaBatchNorm, nn.BatchNorm1d):
    """:class:`ReplicaBatchNorm` for ``(N, C)`` and ``(N, C, L)`` inputs."""


class ReplicaBatchNorm2d(ReplicaBatchNorm, nn.BatchNorm2d):
    """:class:`ReplicaBatchNorm` for ``(N, C, H, W)`` inputs."""


_REPLACEMENTS: dict[type[nn.Module], type[ReplicaBatchNorm]] = {
    nn.BatchNorm1d: ReplicaBatchNorm1d,
    nn.BatchNorm2d: ReplicaBatchNorm2d,
}


def convert_replica_batchnorm(module: nn.Module, replicas: int) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` below ``module`` by its replica variant, in place.

    The new layers take over the old ones' parameter and buffer tensors (the same objects), so
    nothing is copied and the function of the network in eval mode is unchanged.

    Args:
        module: The network (its children are replaced; ``module`` itself must not be a BN).
        replicas: Virtual replicas per forward call, >= 1.

    Returns:
        ``module``.

    Raises:
        ValueError: When ``replicas < 1``.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    for name, child in list(module.named_children()):
        target = _REPLACEMENTS.get(type(child))
        if target is None:
            convert_replica_batchnorm(child, replicas)
            continue
        assert isinstance(child, nn.modules.batchnorm._BatchNorm)
        new = target.__new__(target)
        # Take the child's whole state (parameters, buffers, hyper-parameters) as it is.
        new.__dict__.update(child.__dict__)
        new.replicas = replicas
        setattr(module, name, new)
    return module


def set_replicas(module: nn.Module, replicas: int) -> None:
    """Set the per-call replica count of every :class:`ReplicaBatchNorm` below ``module``.

    Raises:
        ValueError: When ``replicas < 1`` or ``module`` holds no replica BatchNorm.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    layers = [m for m in module.modules() if isinstance(m, ReplicaBatchNorm)]
    if not layers:
        raise ValueError("set_replicas: the module holds no ReplicaBatchNorm layer")
    for layer in layers:
        layer.replicas = replicas


def replica_count(module: nn.Module) -> int:
    """Per-call replicas of the module's replica BatchNorm layers (1 when it has none)."""
    counts = {m.replicas for m in module.modules() if isinstance(m, ReplicaBatchNorm)}
    if len(counts) > 1:
        raise ValueError(f"replica BatchNorm layers disagree on the replica count: {counts}")
    return counts.pop() if counts else 1
