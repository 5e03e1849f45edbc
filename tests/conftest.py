"""Shared test settings: deterministic, single-threaded torch and no W&B traffic."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# Two-core CI machines: oversubscribed threads slow tests tenfold (docs/performance.md).
torch.set_num_threads(1)
