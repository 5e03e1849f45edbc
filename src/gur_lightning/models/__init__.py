"""Network, cluster memories, ADC loss and the LightningModule (docs/method.md §3, §6).

The classes load on first use (PEP 562): the config schema imports the torch-free defaults of
:mod:`gur_lightning.models.options`, and importing this package must not import the
LightningModule with it, whose module imports the data module, which imports the schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gur_lightning.models.backbone import DualStreamResNet, GeM, NonLocalBlock
    from gur_lightning.models.losses import adc_loss, duplicate_views, info_nce
    from gur_lightning.models.memory import ClusterMemory
    from gur_lightning.models.module import GURLitModule

#: Public name -> the submodule defining it.
_EXPORTS: dict[str, str] = {
    "ClusterMemory": "memory",
    "DualStreamResNet": "backbone",
    "GURLitModule": "module",
    "GeM": "backbone",
    "NonLocalBlock": "backbone",
    "adc_loss": "losses",
    "duplicate_views": "losses",
    "info_nce": "losses",
}

__all__ = [
    "ClusterMemory",
    "DualStreamResNet",
    "GURLitModule",
    "GeM",
    "NonLocalBlock",
    "adc_loss",
    "duplicate_views",
    "info_nce",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
