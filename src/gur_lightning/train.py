"""Training entry point: ``python -m gur_lightning.train +experiment=NAME [overrides]``.

The flow (architecture.md §11.3): compose and validate the config, seed, read the data set, expand
the stage schedule into phases (one Lightning epoch each), build the module, the callbacks and the
trainer, fit, evaluate the last-epoch weights with the data set's official protocols, and write
``metrics.json`` beside the resolved ``config.yaml`` in the Hydra run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from gur_lightning.callbacks.recluster import Reclustering
from gur_lightning.callbacks.validation import PeriodicValidation
from gur_lightning.config import register_configs, validate_config
from gur_lightning.data.datamodule import VIReIDDataModule
from gur_lightning.evaluation import (
    evaluate_splits,
    extract_features,
    format_table,
    protocol_splits,
)
from gur_lightning.schedule import Phase, build_phases
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


class PhaseProgressBar(TQDMProgressBar):
    """Progress bar whose description names the GUR epoch, stage and phase."""

    def __init__(self, phases: list[Phase], refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.phases = phases

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Name the phase in the bar's description."""
        super().on_train_epoch_start(trainer, *args)
        phase = self.phases[trainer.current_epoch]
        self.train_progress_bar.set_description(
            f"phase {phase.index + 1}/{len(self.phases)} {phase.label}"
        )


def build_datamodule(cfg: DictConfig) -> VIReIDDataModule:
    """The DataModule from ``cfg.data`` (SynVI generated first when configured)."""
    d = cfg.data
    synvi = OmegaConf.to_container(d.synvi, resolve=True) if d.synvi is not None else None
    return VIReIDDataModule(
        d.name,
        d.root,
        trial=d.trial,
        holdout_val=d.holdout_val,
        synvi=synvi,
        height=d.height,
        width=d.width,
        num_instances=d.num_instances,
        visible_batch_size=d.visible_batch_size,
        infrared_batch_size=d.infrared_batch_size,
        num_workers=d.num_workers,
        eval_batch_size=d.eval_batch_size,
        seed=cfg.seed,
    )


def build_module(cfg: DictConfig):
    """The GURLitModule with its two-stream backbone from ``cfg.model``."""
    from gur_lightning.models import DualStreamResNet, GURLitModule

    m = cfg.model
    backbone = DualStreamResNet(
        depth=m.backbone.depth,
        last_stride=m.backbone.last_stride,
        gem_p=m.backbone.gem_p,
        pretrained=m.backbone.pretrained,
        non_local=m.backbone.non_local,
    )
    return GURLitModule(
        backbone,
        lr=m.lr,
        weight_decay=m.weight_decay,
        lr_step_size=cfg.schedule.lr_step_size,
        lr_gamma=cfg.schedule.lr_gamma,
        temperature=m.memory.temperature,
        memory_momentum=m.memory.momentum,
        memory_update=m.memory.update_mode,
        loss_weight_visible=m.loss_weight_visible,
        loss_weight_infrared=m.loss_weight_infrared,
        channels_last=m.channels_last,
    )


def build_reclustering(cfg: DictConfig, phases: list[Phase]) -> Reclustering:
    """The re-clustering callback from ``cfg.cluster`` and the schedule's CMLU settings."""
    c = cfg.cluster
    return Reclustering(
        phases,
        eps=c.eps,
        eps_intra_camera=c.eps_intra_camera,
        eps_inter_modality=c.eps_inter_modality,
        min_samples=c.min_samples,
        k1=c.k1,
        k2=c.k2,
        knn_backend=c.knn_backend,
        cae_temperature=c.cae_temperature,
        cae_legacy_slicing=c.cae_legacy_slicing,
        cmlu_topk=cfg.schedule.cmlu.topk,
        oracle=c.oracle,
    )


def model_featurizer(module, dm: VIReIDDataModule):
    """Test-time features: flip-averaged, re-normalised, Lanczos-resized (method.md §13.1)."""

    def featurize(samples):
        loader = dm.eval_dataloader(samples, resample="lanczos")
        return extract_features(module, loader, len(samples), renormalize=True)

    return featurize


def _guard_multirun_ddp(cfg: DictConfig) -> None:
    """Refuse Hydra multirun with subprocess-launched DDP (Lightning issue #11300)."""
    try:
        mode = HydraConfig.get().mode
    except ValueError:  # not running under Hydra (tests calling train() directly)
        return
    strategy = str((cfg.trainer or {}).get("strategy", ""))
    devices = (cfg.trainer or {}).get("devices", 1)
    multi = (
        devices not in (1, "1", None, "auto")
        if not isinstance(devices, list)
        else len(devices) > 1
    )
    if (
        mode == RunMode.MULTIRUN
        and multi
        and strategy.startswith("ddp")
        and "spawn" not in strategy
    ):
        raise ValueError(
            "Hydra multirun with trainer.strategy='ddp' re-launches the sweep in every process "
            "(Lightning issue #11300). Use trainer=ddp_cpu / strategy=ddp_spawn, single-device "
            "jobs, or the SLURM launcher (hydra/launcher=submitit_slurm)."
        )


def last_cluster_stats(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last successful clustering's statistics of each stage, as ``cluster/<stage>/<key>``."""
    out: dict[str, float] = {}
    for record in history:
        if record["skipped"]:
            continue
        for key, value in record.items():
            if key in ("phase", "gur_epoch", "stage", "label", "trainer_epoch", "skipped"):
                continue
            out[f"cluster/{record['stage']}/{key}"] = float(value)
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate one configuration; returns the flat metrics written to metrics.json.

    Args:
        cfg: The composed configuration (schema :class:`gur_lightning.config.TrainConfig`).

    Returns:
        Test metrics (``test/<protocol>/<metric>``) and the last cluster statistics.
    """
    validate_config(cfg)
    _guard_multirun_ddp(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    schedule = OmegaConf.to_object(cfg.schedule)
    phases = build_phases(schedule, dm.cameras("visible"), dm.cameras("infrared"))
    log.info(
        "%s: %d GUR epochs expanded into %d phases", schedule.name, schedule.epochs, len(phases)
    )
    module = build_module(cfg)
    recluster = build_reclustering(cfg, phases)
    callbacks = [
        recluster,
        ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), save_last=True, save_top_k=0),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(PhaseProgressBar(phases))
    validation = None
    if cfg.eval.val_every_n_epochs > 0:
        validation = PeriodicValidation(
            phases,
            cfg.eval.val_every_n_epochs,
            model_featurizer,
            checkpoint_dir=str(output_dir / "checkpoints"),
        )
        callbacks.append(validation)
    logger = instantiate(cfg.logger) if cfg.logger is not None else False
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        max_epochs=len(phases),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(output_dir),
    )
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)

    metrics: dict[str, float] = {}
    if cfg.eval.test_after_fit:
        splits = protocol_splits(dm.dataset, max_trials=cfg.eval.max_trials)
        metrics.update(evaluate_splits(splits, model_featurizer(module, dm), prefix="test"))
    metrics.update(last_cluster_stats(recluster.history))
    if validation is not None and validation.history:
        metrics.update({k: v for k, v in validation.history[-1].items() if k != "gur_epoch"})
        metrics["val/holdout/mAP_best"] = validation.best_map
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (output_dir / "clustering_history.json").write_text(
            json.dumps(recluster.history, indent=2)
        )
        if logger:
            logger.log_metrics({k: v for k, v in metrics.items() if k.startswith("test/")})
        if cfg.eval.test_after_fit:
            log.info(
                "last-epoch test results (%%, mean ± std over trials):\n%s", format_table(metrics)
            )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the first protocol's mAP for sweepers."""
    os.environ.setdefault("WANDB_MODE", "offline")
    metrics = train(cfg)
    maps = [v for k, v in sorted(metrics.items()) if k.startswith("test/") and k.endswith("/mAP")]
    return maps[0] if maps else None


register_configs()

if __name__ == "__main__":
    main()
