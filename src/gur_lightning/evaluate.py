"""Evaluation entry point: the full official protocol of a data set for one feature extractor.

    python -m gur_lightning.evaluate +experiment=sysu data.root=/data/SYSU-MM01 ckpt=PATH
    python -m gur_lightning.evaluate +experiment=synvi features=raw_pixels
    python -m gur_lightning.evaluate +experiment=synvi features=untrained  # pretrained start
    python -m gur_lightning.evaluate +experiment=synvi features=untrained \
        model.backbone.pretrained=null  # random weights

``features`` chooses what is evaluated: ``model`` (a trained checkpoint, ``ckpt=`` required),
``untrained`` (the configured network at its initialisation, seeded: random weights, or with
``model.backbone.pretrained`` set the pretrained start, e.g. ``model.backbone.pretrained=synvi``
(what ``+experiment=synvi`` sets), the SynVI stand-in for ImageNet, labelled "pretrained start,
no training") or ``raw_pixels`` (the
eval-resized image flattened and L2-normalised: the floor of a benchmark). The protocols are those
of docs/method.md §13: SYSU-MM01 all- and indoor-search over ten gallery draws, RegDB both
directions for the configured trial, LLCM both directions over ten draws. The table (mean ± std) is
logged and ``metrics.json`` is written in the run folder. No test-set model selection happens here:
a checkpoint is evaluated as given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from gur_lightning.config import ConfigError, EvalRunConfig, register_configs, validate_config
from gur_lightning.data.datamodule import VIReIDDataModule
from gur_lightning.evaluation import evaluate_splits, format_table, protocol_splits
from gur_lightning.train import CONF_DIR, build_datamodule, build_module, model_featurizer
from gur_lightning.utils.checkpoints import (
    TRAINING_CHECKPOINT,
    CheckpointError,
    check_state_dict_fits,
    load_checkpoint,
)
from gur_lightning.utils.logging import get_logger
from gur_lightning.utils.warnings import quiet_known_noise

log = get_logger(__name__)

FEATURES: tuple[str, ...] = ("model", "untrained", "raw_pixels")


def raw_pixel_featurizer(dm: VIReIDDataModule):
    """Flattened, L2-normalised eval-transform pixels (the benchmark's raw-pixel floor)."""

    def featurize(samples):
        feats = torch.zeros(len(samples), 3 * dm.height * dm.width)
        for batch in dm.eval_dataloader(samples, resample="lanczos"):
            feats[batch["index"]] = batch["img"].flatten(1).float()
        return F.normalize(feats, dim=1)

    return featurize


def features_label(cfg: DictConfig) -> str:
    """What ``cfg.features`` evaluates, in words, for the logged table.

    ``untrained`` builds the network exactly as training starts it (``build_module``), so with
    ``model.backbone.pretrained`` set it is the pretrained start, not a random network.
    """
    if cfg.features == "model":
        return f"trained model ({cfg.ckpt})"
    if cfg.features == "untrained":
        pretrained = cfg.model.backbone.pretrained
        if pretrained is None:
            return "untrained network (random initialisation)"
        return f"pretrained start ({pretrained}), no training"
    return "raw pixels"


def load_checkpoint_weights(
    module: torch.nn.Module, path: str, *, hint: str = "check model.backbone.*"
) -> None:
    """Load a training checkpoint's network weights (memories are phase-local and skipped).

    The file is loaded as data only (tensors and plain containers, ``weights_only=True``).

    Args:
        module: The freshly built module (same architecture as the checkpoint's).
        path: A ``.ckpt`` written by ``gur_lightning.train``.
        hint: The settings that choose the architecture, named when the weights do not fit.

    Raises:
        CheckpointNotFoundError: If the file does not exist (a ``FileNotFoundError``).
        CheckpointError: If the file is not a training checkpoint (text, random bytes,
            truncated, a pickle of Python objects) or holds another network's weights.
    """
    state = load_checkpoint(path, what=f"ckpt=: {TRAINING_CHECKPOINT}")
    if not isinstance(state["state_dict"], Mapping):
        raise CheckpointError(f"{path!r} is not {TRAINING_CHECKPOINT}: its state_dict is no dict")
    weights = {k: v for k, v in state["state_dict"].items() if not k.startswith("memory")}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith("memory")}
    check_state_dict_fits(weights, own, path=path, hint=hint)
    module.load_state_dict(weights, strict=False)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate one feature extractor with the data set's protocols; returns the flat metrics."""
    validate_config(cfg, EvalRunConfig)
    if cfg.features not in FEATURES:
        raise ConfigError(
            f"config value features={cfg.features!r} is invalid: expected one of {FEATURES}"
        )
    if cfg.features == "model" and not cfg.ckpt:
        raise ConfigError("features=model needs ckpt=PATH (a checkpoint written by training)")
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    if cfg.features == "raw_pixels":
        featurize = raw_pixel_featurizer(dm)
    else:
        # A checkpoint replaces every network weight: its pretrained start is not needed.
        module = build_module(cfg, load_pretrained=cfg.features != "model")
        if cfg.features == "model":
            load_checkpoint_weights(
                module, cfg.ckpt, hint=f"model.backbone.depth={cfg.model.backbone.depth}"
            )
        featurize = model_featurizer(module, dm)
    splits = protocol_splits(
        dm.require_dataset(),
        max_trials=cfg.eval.max_trials,
        within_modality=cfg.eval.within_modality,
    )
    metrics = evaluate_splits(splits, featurize, prefix="test")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info(
        "%s, features=%s (%%, mean ± std over trials):\n%s",
        features_label(cfg),
        cfg.features,
        format_table(metrics),
    )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    quiet_known_noise()
    evaluate(cfg)


register_configs()

if __name__ == "__main__":
    main()
