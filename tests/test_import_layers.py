"""The layers import in one direction (docs/architecture.md §11.1): checked in fresh processes."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(module: str) -> set[str]:
    """The modules a fresh interpreter holds after ``import module``."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # The network and its memories do not need the data layer.
        ("gur_lightning.models", ("gur_lightning.data", "gur_lightning.callbacks")),
        # The stage policy is pure maths: no Lightning, no data, no module, no callback.
        (
            "gur_lightning.clustering.policy",
            ("lightning", "gur_lightning.data", "gur_lightning.models", "gur_lightning.callbacks"),
        ),
    ],
)
def test_a_layer_does_not_import_the_layers_above_it(module, forbidden):
    loaded = _loaded_after(module)
    assert module in loaded
    leaked = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
    assert not leaked, f"importing {module} loads {leaked}"
