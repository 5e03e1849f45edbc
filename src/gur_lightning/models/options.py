"""Defaults of the network, the memories and the optimiser, defined once (docs/method.md §3-12).

Plain constants, no torch: the config schema (``model`` group, :mod:`gur_lightning.config`)
takes its defaults from here, and so do the constructors that use them
(:class:`~gur_lightning.models.backbone.DualStreamResNet`,
:class:`~gur_lightning.models.memory.ClusterMemory`,
:class:`~gur_lightning.models.module.GURLitModule`), so a default cannot differ between a
configured run and a direct call (tests, benchmarks). The learning-rate steps are the schedule's
(:data:`gur_lightning.schedule.LR_STEP_SIZE`). Values are checked where they are used.

An opt-in switch that is off (``pretrained=None``, ``non_local=False``, ``channels_last=False``)
is not a default to tune and stays written where it is read (docs/architecture.md §11.2).
"""

from __future__ import annotations

from typing import Literal

UpdateMode = Literal["mean", "hard"]
"""How a memory row follows its cluster: every sample in order, or the hardest positive."""

DEPTH = 50
"""ResNet depth of the reference (2048-d features; docs/method.md §3)."""
LAST_STRIDE = 1
"""Stride of layer4 (the reference's 1: a 288 x 144 input gives 18 x 9 maps)."""
GEM_P = 3.0
"""GeM exponent of the reference, fixed (not learnable), docs/method.md §3."""
BN_REPLICAS = 1
"""R, the ``nn.DataParallel`` replicas whose BatchNorm is reproduced: 1 is one BatchNorm over
the whole batch (the official recipe uses the reference's 4; docs/recipes.md)."""
TEMPERATURE = 0.05
"""Memory temperature τ (``--temp 0.05``), docs/method.md §6.1 / §12."""
MEMORY_MOMENTUM = 0.1
"""Weight of the OLD memory row in the momentum update (``--momentum 0.1``; m = 0.1 means the
new row is 90 % the current sample), docs/method.md §6.1 / §17.14."""
UPDATE_MODE: UpdateMode = "mean"
"""Every sample updates its row, in order (the reference; docs/method.md §6.1)."""
LR = 3.5e-4
"""Adam learning rate before decay, docs/method.md §12."""
WEIGHT_DECAY = 5e-4
"""Adam's coupled L2 weight decay, docs/method.md §12."""
LOSS_WEIGHT = 1.0
"""Weight of each stream's InfoNCE term (visible, infrared): the reference sums them."""

#: Reserved ``model.backbone.pretrained`` value naming the SynVI pretrained start
#: (docs/synthetic.md, "The pretrained start"), as ``torchvision`` names torchvision's cache.
SYNVI_PRETRAINED = "synvi"
#: The ResNet depths the two-stream network is built for (torchvision's BasicBlock and
#: Bottleneck ResNets with ImageNet weights).
SUPPORTED_DEPTHS: tuple[int, ...] = (18, 34, 50)
