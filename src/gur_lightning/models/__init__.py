"""Network, cluster memories, ADC loss and the LightningModule (docs/method.md §3, §6)."""

from gur_lightning.models.backbone import DualStreamResNet, GeM, NonLocalBlock
from gur_lightning.models.losses import adc_loss, duplicate_views, info_nce
from gur_lightning.models.memory import ClusterMemory
from gur_lightning.models.module import GURLitModule

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
