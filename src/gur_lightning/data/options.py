"""Defaults of the data module and the training augmentations, defined once (docs/method.md §4-5).

Plain constants, no torch: the config schema (``data`` group, :mod:`gur_lightning.config`) takes
its defaults from here, and so do the constructors that use them
(:class:`~gur_lightning.data.datamodule.VIReIDDataModule`,
:func:`~gur_lightning.data.transforms.build_train_transform` and its channel augmentations), so a
default cannot differ between a configured run and a direct call. The values are the
reference's, for SYSU-MM01 at 288 x 144; values are checked where they are used.
"""

from __future__ import annotations

TRIAL = 1
"""RegDB split (1..10) trained and tested; SYSU-MM01 and LLCM ignore it."""
HEIGHT = 288
"""Network input height."""
WIDTH = 144
"""Network input width."""
NUM_INSTANCES = 16
"""K, images per pseudo-identity in a batch (docs/method.md §5)."""
VISIBLE_BATCH_SIZE = 128
"""Visible images per optimiser step over all ranks, before the second view (8 identities x 16)."""
INFRARED_BATCH_SIZE = 256
"""Infrared images per optimiser step over all ranks (16 identities x 16)."""
NUM_WORKERS = 4
"""Loader worker processes."""
EVAL_BATCH_SIZE = 64
"""Batch size of feature extraction (clustering, validation, test)."""
SHRINK_BATCH = True
"""A phase whose clustering has too few pseudo-identities for a batch trains on a smaller batch
(all identities) instead of being skipped."""
MIN_IDENTITIES = 2
"""Fewest pseudo-identities per batch and rank a shrunk batch may have."""

PAD = 10
"""Zero padding on every side before the random crop: 7 % of the reference's 144-pixel width
(docs/method.md §4); smaller inputs should scale it with the width."""
FLIP_P = 0.5
"""Horizontal-flip probability."""
ERASING_P = 0.5
"""``ChannelRandomErasing`` probability."""
ADAP_GRAY_P = 0.5
"""Grey probability inside the infrared ``ChannelAdapGray``."""
INTENSITY_REMAP_P = 0.0
"""Probability of a random grey-level curve on infrared images and the second visible view: not
in the reference, so off (SynVI turns it on; docs/synthetic.md)."""
INTENSITY_REMAP_KNOTS = 4
"""Linear pieces of that curve."""
