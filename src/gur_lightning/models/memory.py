"""Cluster-centroid memory with the official momentum rule (docs/method.md §6.1, §7.4, §17.13-14).

The memory is a plain fp32 tensor of L2-normalised rows, not a parameter and not a registered
module: it never enters the optimizer or the state dict (``GURLitModule`` writes it to its own
checkpoint entry), is rebuilt after every clustering (docs/method.md §7.4), and can be swapped
without changing the module tree that DDP wraps (docs/architecture.md §10.8). Logits are taken
against the memory as it stands; the update is a separate call made after the optimizer step
(docs/architecture.md §10.9, §11.5.4), so every stream of a batch sees the pre-update memory
(docs/method.md §17.13).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gur_lightning.models.options import MEMORY_MOMENTUM, TEMPERATURE, UPDATE_MODE, UpdateMode

__all__ = ["MEMORY_MOMENTUM", "TEMPERATURE", "ClusterMemory", "UpdateMode", "at_least_fp32"]

#: Guard against division by zero when renormalising (a row can only vanish if a sample is
#: exactly opposite to it and m = 0.5).
_NORM_EPS: float = 1e-12


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in fp32, or unchanged if it is already fp64 (gradient checks run in fp64)."""
    return x if x.dtype == torch.float64 else x.float()


def _renormalise(rows: Tensor) -> Tensor:
    """Divide each row by its L2 norm, as the reference does (``M_y /= ||M_y||``)."""
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


class ClusterMemory:
    """K cluster centroids of dimension D, updated by momentum after every training step.

    Args:
        centroids: Optional ``(K, D)`` initial centroids (see :meth:`reset`).
        temperature: τ in ``logits = norm(f) M^T / τ``.
        momentum: Weight of the OLD row: ``M_y ← norm(m·M_y + (1−m)·q)`` (docs/method.md §17.14).
        update_mode: ``"mean"``: every sample, one after another in batch order (the
            reference's ``CM``); ``"hard"``: per class only the least similar sample
            (``CM_Hard``, off in every GUR/ADCA script), docs/method.md §6.1.

    Attributes:
        features: ``(K, D)`` fp32 unit rows (``None`` before :meth:`reset`).
    """

    def __init__(
        self,
        centroids: Tensor | None = None,
        *,
        temperature: float = TEMPERATURE,
        momentum: float = MEMORY_MOMENTUM,
        update_mode: UpdateMode = UPDATE_MODE,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"ClusterMemory: temperature must be positive, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ClusterMemory: momentum must lie in [0, 1), got {momentum}")
        if update_mode not in ("mean", "hard"):
            raise ValueError(
                f"ClusterMemory: update_mode must be 'mean' or 'hard', got {update_mode!r}"
            )
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.update_mode: UpdateMode = update_mode
        self.features: Tensor | None = None
        if centroids is not None:
            self.reset(centroids)

    @property
    def num_clusters(self) -> int:
        """K, the number of rows (0 before :meth:`reset`)."""
        return 0 if self.features is None else self.features.shape[0]

    @property
    def dim(self) -> int:
        """D, the feature dimension (0 before :meth:`reset`)."""
        return 0 if self.features is None else self.features.shape[1]

    def reset(self, centroids: Tensor) -> None:
        """Replace the memory by ``norm(centroids)`` in fp32 (docs/method.md §7.4).

        Args:
            centroids: ``(K, D)`` cluster centres, e.g. means of extracted features ``e(x)``.

        Raises:
            ValueError: If ``centroids`` is not a non-empty finite 2-D tensor without zero rows.
        """
        if not isinstance(centroids, Tensor) or centroids.ndim != 2 or centroids.shape[0] == 0:
            shape = tuple(centroids.shape) if isinstance(centroids, Tensor) else type(centroids)
            raise ValueError(f"ClusterMemory.reset: expected centroids (K>0, D), got {shape}")
        rows = centroids.detach().float()
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("ClusterMemory.reset: centroids contain NaN or inf")
        norms = rows.norm(dim=1)
        if bool((norms == 0).any()):
            bad = (norms == 0).nonzero().flatten()[:5].tolist()
            raise ValueError(f"ClusterMemory.reset: centroid rows {bad} are all zero")
        self.features = (rows / norms[:, None]).contiguous()

    def to(self, device: torch.device | str) -> ClusterMemory:
        """Move the rows to ``device`` (kept fp32) and return ``self``."""
        if self.features is not None:
            self.features = self.features.to(device=device, dtype=torch.float32)
        return self

    def _rows_for(self, features: Tensor) -> Tensor:
        """The memory on ``features``' device; raises if :meth:`reset` was never called."""
        if self.features is None:
            raise RuntimeError("ClusterMemory is empty: call reset(centroids) first")
        if self.features.device != features.device:
            self.to(features.device)
        assert self.features is not None
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"ClusterMemory: expected features (B, {self.features.shape[1]}), got "
                f"{tuple(features.shape)}"
            )
        return self.features

    def _check_labels(self, labels: Tensor, n: int) -> Tensor:
        """Validate ``labels`` against the batch size and K; return them as long."""
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"ClusterMemory: expected labels ({n},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"ClusterMemory: labels must be integers, got {labels.dtype}")
        labels = labels.long()
        if n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_clusters):
            raise ValueError(
                f"ClusterMemory: labels must lie in [0, {self.num_clusters}), got range "
                f"[{int(labels.min())}, {int(labels.max())}] (outliers must be removed first)"
            )
        return labels

    def logits(self, features: Tensor) -> Tensor:
        """Cosine logits against every centroid, in fp32 even under autocast (docs/method.md §6.1).

        Gradients flow into ``features`` (through the normalisation), never into the memory.

        Args:
            features: ``(B, D)`` un-normalised BN-neck outputs ``f(x)``.

        Returns:
            ``(B, K)`` ``norm(f) M^T / τ`` in fp32 (fp64 for fp64 features).
        """
        memory = self._rows_for(features)
        # τ = 0.05 multiplies the cosines by 20: keep this matmul out of bf16
        # (docs/method.md §18.2).
        with torch.autocast(device_type=features.device.type, enabled=False):
            q = F.normalize(at_least_fp32(features), dim=1)
            return q @ memory.to(q.dtype).t() / self.temperature

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Apply the momentum rule for every sample of a batch (docs/method.md §6.1).

        ``mean`` mode: for b = 1..B in order, ``M_y ← m·M_y + (1−m)·q_b`` then
        ``M_y ← M_y / ||M_y||`` with ``q_b = norm(f_b)`` and ``y = y_b``. Distinct classes do not
        interact, so the loop runs over occurrence ranks instead of samples: step r updates, for
        every class at once, its r-th sample of the batch. That is the same sequence of
        operations on every row as the per-sample loop, in max-samples-per-class steps
        (16 or 32 with P×K batches) instead of B.

        ``hard`` mode: per class present, only the sample least similar to the current row,
        ``M_y ← norm(m·M_y + (1−m)·q_hard)`` (first such sample on ties, as ``np.argmin``).

        The result replaces :attr:`features` (a new tensor); the old tensor is not modified.

        Args:
            features: ``(B, D)`` features (detached; normalised here), any floating dtype.
            labels: ``(B,)`` integer cluster ids in ``[0, K)``.
        """
        current = self._rows_for(features)
        labels = self._check_labels(labels, features.shape[0])
        if features.shape[0] == 0:
            return
        # Out of place: the previous tensor may still be saved by an autograd graph
        # (docs/architecture.md §10.9) or, after ddp_spawn pickled the module, live in memory
        # shared with the other ranks, which would then see each other's updates.
        memory = current.clone()
        with torch.autocast(device_type=features.device.type, enabled=False):
            q = F.normalize(features.detach().float(), dim=1)
            m = self.momentum
            if self.update_mode == "hard":
                sims = (q * memory[labels]).sum(dim=1)
                n, k = q.shape[0], memory.shape[0]
                lowest = torch.full((k,), float("inf"), device=q.device)
                lowest = lowest.scatter_reduce(0, labels, sims, reduce="amin")
                position = torch.arange(n, device=q.device)
                candidate = torch.where(sims == lowest[labels], position, n)
                first = torch.full((k,), n, device=q.device, dtype=torch.long)
                first = first.scatter_reduce(0, labels, candidate, reduce="amin")
                rows = (first < n).nonzero().flatten()
                chosen = q[first[rows]]
                memory[rows] = _renormalise(m * memory[rows] + (1.0 - m) * chosen)
                self.features = memory
                return
            order = torch.sort(labels, stable=True).indices  # batch order within each class
            sorted_labels = labels[order]
            _, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(labels.shape[0], device=q.device) - torch.repeat_interleave(
                starts, counts
            )
            for r in range(int(counts.max())):
                at_rank = order[rank == r]  # one sample per class that has > r samples
                rows = labels[at_rank]
                memory[rows] = _renormalise(m * memory[rows] + (1.0 - m) * q[at_rank])
            self.features = memory

    def __repr__(self) -> str:
        return (
            f"ClusterMemory(K={self.num_clusters}, D={self.dim}, temperature={self.temperature}, "
            f"momentum={self.momentum}, update_mode={self.update_mode!r})"
        )
