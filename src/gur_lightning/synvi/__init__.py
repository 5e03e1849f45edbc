"""SynVI: the procedural visible-infrared benchmark (docs/synthetic.md).

SynVI writes pedestrian images in two modalities into **the raw on-disk layouts of SYSU-MM01,
RegDB and LLCM**, so that the real readers, protocols and training loop run on it unchanged.
Identity lives in modality-invariant cues (body shape, garment silhouettes, carried objects,
pattern geometry); colour never crosses the modality gap; cameras differ in background,
illumination, sensor response and viewpoint.

Example:
    >>> from gur_lightning.synvi import generate_synvi
    >>> root = generate_synvi("sysu", "data/synvi_sysu", seed=0)  # doctest: +SKIP

Command line: ``python -m gur_lightning.synvi --layout sysu --out DIR``; example grid:
``python -m gur_lightning.synvi.grid --out docs/synvi_grid.png``. The pretrained start, SynVI's
stand-in for ImageNet weights (``model.backbone.pretrained=synvi``), is built by
:mod:`gur_lightning.pretrain` (``python -m gur_lightning.pretrain``) because it needs torch;
its parameters and its world are here, in :mod:`gur_lightning.synvi.pretraining`.
"""

from gur_lightning.synvi.config import (
    LAYOUT_DEFAULTS,
    LAYOUTS,
    PRESET_KNOBS,
    PRESETS,
    SynVIConfig,
    resolve_config,
)
from gur_lightning.synvi.generate import (
    MARKER_NAME,
    generate_synvi,
    parameter_hash,
    read_marker,
    tree_parameters,
)
from gur_lightning.synvi.layouts import ImageJob, Plan, build_world, plan_tree
from gur_lightning.synvi.render import render_image

__all__ = [
    "LAYOUTS",
    "LAYOUT_DEFAULTS",
    "MARKER_NAME",
    "PRESETS",
    "PRESET_KNOBS",
    "ImageJob",
    "Plan",
    "SynVIConfig",
    "build_world",
    "generate_synvi",
    "parameter_hash",
    "plan_tree",
    "read_marker",
    "render_image",
    "resolve_config",
    "tree_parameters",
]
