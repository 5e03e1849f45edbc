"""Input checks shared by the pseudo-label functions: clear errors naming the bad argument.

Every public function of :mod:`gur_lightning.clustering` funnels its arrays through these helpers
so that malformed input fails early with a message naming the argument and what was expected,
never deep inside a BLAS call or scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

SUPPORTED_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")
"""Devices the torch code paths run on; anything else (``meta``, ``mps``, ...) is rejected."""


def as_feature_tensor(features: Any, name: str = "features") -> torch.Tensor:
    """Return ``features`` as a finite float32 (N, D) torch tensor on its original device.

    Args:
        features: (N, D) torch tensor or numpy array of real numbers. Integer and float64 input
            is cast to float32 (the reference feeds float32 to faiss, docs/method.md §7.2).
        name: Argument name used in error messages.

    Returns:
        Contiguous float32 tensor of shape (N, D), on the input's device (CPU for numpy).

    Raises:
        TypeError: If ``features`` is neither a tensor nor array-like, or is complex/boolean.
        ValueError: If it is not 2-D, is empty, or holds NaN or infinite values, or lives on an
            unsupported device.
    """
    if isinstance(features, torch.Tensor):
        tensor = features.detach()
    else:
        try:
            array = np.asarray(features)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy array, got {type(features)}"
            ) from exc
        if array.dtype == object:
            raise TypeError(f"{name} must be a numeric array, got dtype=object")
        if not array.ndim:
            raise ValueError(f"{name} must be a 2-D (N, D) matrix, got a scalar")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.device.type not in SUPPORTED_DEVICE_TYPES:
        raise ValueError(
            f"{name} is on device '{tensor.device}'; expected one of {SUPPORTED_DEVICE_TYPES}"
        )
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) matrix, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); need N >= 1 and D >= 1")
    tensor = tensor.to(torch.float32).contiguous()
    # One reduction is enough when all is well; overflow of a finite sum only costs a re-check.
    if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        finite = torch.isfinite(tensor).all(dim=1)
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad.numel()} row(s), first at row "
            f"{int(bad[0])}; clean the features (e.g. a diverged model) before clustering"
        )
    return tensor


def as_label_array(labels: Any, name: str = "labels", length: int | None = None) -> np.ndarray:
    """Return integer labels as a 1-D int64 numpy array (``-1`` marks an outlier).

    Args:
        labels: (N,) integer torch tensor, numpy array or sequence.
        name: Argument name used in error messages.
        length: Required length, or ``None`` for any.

    Returns:
        (N,) int64 numpy array (a copy when the input was a tensor).

    Raises:
        ValueError: If the labels are not 1-D, have the wrong length, are not integers, or
            hold values below ``-1``.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)):
            if not np.all(array == np.round(array)):
                raise ValueError(f"{name} must be integers, got non-integral {array.dtype}")
        else:
            raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries, expected {length}")
    if array.size and array.min() < -1:
        raise ValueError(
            f"{name} holds {int(array.min())}; labels must be >= 0, or -1 for an outlier"
        )
    return array


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking ``value >= minimum``.

    Args:
        value: The option value.
        name: Option name used in error messages.
        minimum: Smallest allowed value.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: If ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
