"""Cross-memory association embedding, CAE (docs/method.md §8).

Every image is described by how it relates to each domain's memory: with ``u = norm(e)`` and
memories ``M^(1..D)`` (one per camera, §8.1, or per modality, §8.2),
``CAE(e) = [softmax(u M^(1)T / τ); ...; softmax(u M^(D)T / τ)]``, each block a probability
vector over that domain's prototypes, not re-normalised as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gur_lightning.clustering._validation import as_feature_tensor
from gur_lightning.clustering.options import DEFAULT_CAE_TEMPERATURE


def legacy_block_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Column ranges of the reference's buggy camera-CAE slicing (docs/method.md §8.1, §17.1).

    The reference stores cumulative sizes ``[n0, n0+n1, ...]`` and slices as if they were
    individual sizes: block ``d`` starts where block ``d-1`` ended and spans the *cumulative*
    size ``n0 + ... + nd``, clipped to the total width (Python slicing); later blocks may be empty.

    Args:
        sizes: Prototype counts ``K_1 .. K_D``.

    Returns:
        ``[(start, stop), ...]`` per block, ``start <= stop <= Σ K_d``.
    """
    width = int(sum(sizes))
    bounds = []
    start = 0
    cumulative = 0
    for size in sizes:
        cumulative += int(size)
        lo, hi = min(start, width), min(start + cumulative, width)
        bounds.append((lo, hi))
        start += cumulative
    return bounds


def cae_embedding(
    features: Any,
    prototypes: Sequence[torch.Tensor],
    temperature: float = DEFAULT_CAE_TEMPERATURE,
    legacy_slicing: bool = False,
) -> torch.Tensor:
    """CAE vectors of ``features`` against per-domain prototype memories (docs/method.md §8).

    Args:
        features: (N, D) extracted features ``e``; L2-normalised here (``u = norm(e)``).
        prototypes: One (K_d, D) memory per domain (cameras §8.1, or [visible, infrared]
            §8.2), on the features' device. Rows are L2-normalised here too (the reference
            re-normalises the memories it reads, §8.1); an empty memory gives an empty block.
        temperature: Softmax temperature τ (0.05: logits times 20).
        legacy_slicing: Reproduce the reference's camera-CAE slicing bug (§8.1, §17.1) for
            parity studies: blocks follow :func:`legacy_block_bounds`. Identical to the correct
            blocks for one or two domains.

    Returns:
        (N, Σ K_d) float32 tensor on the features' device; each (non-empty) block of a row sums
        to 1.

    Raises:
        ValueError: If there are no prototypes, a memory is not (K, D) with the features' D, or
            lives on another device, or the temperature is not positive.
    """
    x = as_feature_tensor(features)
    if len(prototypes) == 0:
        raise ValueError("cae_embedding needs at least one prototype memory, got none")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mems = []
    for d, mem in enumerate(prototypes):
        m = as_prototype(mem, x, f"prototypes[{d}]")
        mems.append(m)
    sizes = [m.shape[0] for m in mems]
    u = F.normalize(x, dim=1)
    bank = F.normalize(torch.cat(mems), dim=1)
    logits = (u @ bank.t()) / temperature
    if legacy_slicing:
        bounds = legacy_block_bounds(sizes)
    else:
        ends = torch.tensor(sizes).cumsum(0).tolist()
        bounds = [(e - s, e) for s, e in zip(sizes, ends, strict=True)]
    blocks = [torch.softmax(logits[:, lo:hi], dim=1) for lo, hi in bounds]
    return torch.cat(blocks, dim=1)


def as_prototype(mem: Any, features: torch.Tensor, name: str) -> torch.Tensor:
    """Validate one prototype memory against the features: (K, D) float32, same device.

    Args:
        mem: (K, D) tensor or array; K may be 0.
        features: The (N, D) features it will be compared with.
        name: Argument name for error messages.

    Returns:
        float32 (K, D) tensor on the features' device.

    Raises:
        ValueError: On a wrong shape, non-finite values or a different device.
    """
    if isinstance(mem, torch.Tensor) and mem.device != features.device:
        raise ValueError(
            f"{name} is on {mem.device} but the features are on {features.device}; move both "
            f"to one device"
        )
    t = torch.as_tensor(mem).detach()
    if t.ndim != 2 or t.shape[1] != features.shape[1]:
        raise ValueError(
            f"{name} must be (K, {features.shape[1]}) like the features, got {tuple(t.shape)}"
        )
    t = t.to(device=features.device, dtype=torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t
