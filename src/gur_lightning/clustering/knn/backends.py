"""Which engine runs the kNN: device, backend (torch or faiss) and the numba kernels.

faiss is optional and slow to import, so it is only imported when it can matter; the numba
kernels are imported (compiled, or loaded from numba's cache) once, and their absence falls back
to numpy with the same results (docs/performance.md).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sys
from types import ModuleType
from typing import Any

import torch

from gur_lightning.clustering.options import KERNEL_CHOICES, KNN_BACKENDS
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)


def faiss_available() -> bool:
    """Return whether the optional ``faiss`` package is installed, without importing it.

    Importing faiss is slow and logs its loader's lines, so it is only imported when used.
    """
    if "faiss" in sys.modules:
        return sys.modules["faiss"] is not None
    try:
        return importlib.util.find_spec("faiss") is not None
    except (ImportError, ValueError):
        return False


def _faiss_may_have_gpus() -> bool:
    """Whether faiss is already imported or installed as a GPU build (a cheap check).

    Only then is it worth importing faiss to count its GPUs; a CPU-only faiss never makes
    ``"auto"`` choose it.
    """
    if sys.modules.get("faiss") is not None:
        return True
    try:
        dists = importlib.metadata.packages_distributions().get("faiss", [])
    except Exception:  # broken metadata of an unrelated package: assume no GPU build
        return False
    return any("gpu" in name.lower() for name in dists)


def _faiss_num_gpus() -> int:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_knn_device(features: torch.Tensor, device: Any | None) -> torch.device:
    """Return the device the torch kNN runs on.

    Args:
        features: The (N, D) feature tensor.
        device: ``None`` (the features' own device), or a device / string such as ``"cuda"``.

    Returns:
        A ``torch.device`` of type cpu or cuda.

    Raises:
        ValueError: If the device is unsupported or CUDA is requested but unavailable.
    """
    dev = features.device if device is None else torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"knn device must be 'cpu' or 'cuda', got '{dev}'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"knn device '{dev}' requested but torch.cuda.is_available() is False")
    return dev


def resolve_knn_backend(backend: str, run_device: torch.device) -> str:
    """Resolve ``"auto"`` and validate an explicit backend name.

    ``"auto"`` is the torch engine, except on a machine whose faiss has GPUs while the torch
    features live on the CPU, where faiss-GPU is used (faiss is only imported to count its GPUs
    when a GPU build is installed or it is already imported; ``"torch"`` never imports it). All
    engines give the same neighbour sets (the near-tie guard runs on each), so the choice only
    affects speed.

    Args:
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        run_device: The device resolved by :func:`resolve_knn_device`.

    Returns:
        ``"torch"`` or ``"faiss"``.

    Raises:
        ValueError: For an unknown name, or ``"faiss"`` when faiss is not installed.
    """
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn_backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise ValueError(
            "knn_backend='faiss' but faiss is not installed; pip install faiss-cpu (or "
            "faiss-gpu), or use knn_backend='torch'"
        )
    if backend == "auto":
        if run_device.type == "cpu" and _faiss_may_have_gpus() and _faiss_num_gpus() > 0:
            return "faiss"
        return "torch"
    return backend


@functools.cache
def load_compiled_kernels() -> ModuleType | None:
    """Import the numba kernels once; ``None`` (logged once) when they cannot be built.

    The import compiles them, or loads them from numba's on-disk cache. The result is cached
    for the process (``load_compiled_kernels.cache_clear()`` forgets it); callers choosing an
    engine go through :func:`resolve_kernels`.

    Returns:
        The module :mod:`gur_lightning.clustering._kernels`, or None when importing it failed.
    """
    try:
        from gur_lightning.clustering import _kernels
    except Exception as err:  # numba missing, or too old / too new for this numpy
        log.warning(
            "numba kernels unavailable (%s: %s); the pseudo-label engine uses its numpy paths "
            "(same labels, about 0.3 s slower per 10,000 points)",
            type(err).__name__,
            err,
        )
        return None
    return _kernels


def resolve_kernels(engine: str) -> ModuleType | None:
    """Resolve the pseudo-label engine's kernels: the numba module, or ``None`` for numpy.

    They run the CPU kNN's block scan, the k-reciprocal expansion and the Jaccard accumulation;
    either way the neighbours, sets and distances are the same.

    Args:
        engine: ``"auto"`` (numba when it can be imported, else numpy), ``"numba"`` or
            ``"numpy"``.

    Returns:
        The compiled kernels module, or ``None`` for the numpy paths.

    Raises:
        ValueError: For an unknown name, or ``"numba"`` when the kernels cannot be built.
    """
    if engine not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be 'auto', 'numba' or 'numpy', got {engine!r}")
    if engine == "numpy":
        return None
    kernels = load_compiled_kernels()
    if kernels is None and engine == "numba":
        raise ValueError(
            "kernels='numba' but the numba kernels could not be built (see the warning "
            "above); pip install numba, or use kernels='numpy'"
        )
    return kernels
