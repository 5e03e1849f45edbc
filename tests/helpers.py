"""Composing the project's Hydra configs in tests, the way the command line does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gur_lightning.config import register_configs
from gur_lightning.train import CONF_DIR


def compose_config(
    *overrides: str, config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def smoke_config(
    data_dir: Path, output_dir: Path, *overrides: str, **kwargs: object
) -> DictConfig:
    """The smoke experiment with its SynVI tree and run folder under the test's temp dirs."""
    return compose_config(
        "+experiment=smoke",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={output_dir}",
        *overrides,
        **kwargs,
    )
