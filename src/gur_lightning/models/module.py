"""``GURLitModule``: ADC training against cluster memories, feature extraction (docs/method.md §6).

Division of labour (docs/architecture.md §11.4): the re-clustering callback decides *when* to
re-cluster, installs the new memories with :meth:`GURLitModule.set_memories` and starts every
phase with :meth:`GURLitModule.begin_phase`; this module owns all memory state (the memories
and their routing during a phase, the trained memories kept as CAE prototypes across phases,
both checkpointed here), the learning rate, the loss and the DDP-consistent memory update; the
DataModule owns the loaders. The step:

1. ``training_step``: both visible views and the infrared batch through the backbone in one call
   (docs/method.md §6.2), InfoNCE of each stream against its routed memory, weighted sum. The
   detached fp32 features are stashed.
2. Lightning runs backward and the optimizer step.
3. ``on_train_batch_end``: the stashed features of every rank are gathered in rank order and
   the memories are updated, visible stream first, then infrared (docs/method.md §17.13). Every
   rank applies the same update to the same rows, so memories stay bit-identical without
   broadcasting buffers (docs/architecture.md §11.5.4-5).

Because the update comes after the step, both streams' gradients use the pre-update memory,
also when they share one (stage 3, and stage 2 after CMLU; docs/method.md §6.2, §17.13).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gur_lightning.clustering.policy import Prototypes
from gur_lightning.modalities import MODALITIES, MODALITY_INDEX
from gur_lightning.models.losses import adc_loss, duplicate_views
from gur_lightning.models.memory import MEMORY_MOMENTUM, TEMPERATURE, ClusterMemory, UpdateMode
from gur_lightning.models.options import LOSS_WEIGHT, LR, UPDATE_MODE, WEIGHT_DECAY
from gur_lightning.schedule import LR_GAMMA, LR_STEP_SIZE
from gur_lightning.utils.distributed import average_buffers, broadcast_buffers, gather_tensors
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

__all__ = ["GURLitModule", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the phase and checkpoint."""


#: Checkpoint key of the GUR epoch, so a resumed run derives the same learning rate.
_CKPT_GUR_EPOCH: str = "gur_epoch"
#: Checkpoint key of the backbone's DataParallel replica count R (``model.bn_replicas``).
_CKPT_BN_REPLICAS: str = "bn_replicas"
#: Checkpoint key of the memory state: the installed memories, their routing and the prototypes.
_CKPT_MEMORIES: str = "cluster_memories"
#: Labels travel as an fp32 column in the packed all-gather; fp32 holds integers exactly
#: below 2**24, far above any cluster count.
_MAX_PACKED_LABEL: int = 2**24


class GURLitModule(L.LightningModule):
    """ADC / GUR training module (docs/method.md §6, §12, §18.2).

    Args:
        backbone: Two-stream network with ``forward(x_visible, x_infrared) -> (f_v, f_i)``
            returning raw BN-neck features in train mode and L2-normalised ones in eval mode,
            e.g. :class:`~gur_lightning.models.backbone.DualStreamResNet`.
        lr: Adam learning rate before decay.
        weight_decay: Adam's coupled L2 weight decay (``torch.optim.Adam``), docs/method.md §12.
        lr_step_size: Decay the learning rate every this many GUR epochs.
        lr_gamma: Decay factor.
        temperature: Memory temperature τ.
        memory_momentum: Weight of the OLD memory row in the update (0.1: 90 % new sample),
            docs/method.md §17.14.
        memory_update: ``"mean"`` (every sample in order, the reference) or ``"hard"``.
        loss_weight_visible: Weight of the visible InfoNCE term.
        loss_weight_infrared: Weight of the infrared InfoNCE term.
        channels_last: Convert the backbone and every input batch to channels-last memory
            format (faster convolutions on recent CPUs and GPUs).

    Attributes:
        gur_epoch: The GUR epoch that drives the learning-rate schedule; the re-clustering
            callback sets it at the start of each phase (:meth:`begin_phase`; a Lightning epoch
            is one phase). Defaults to ``current_epoch`` until set.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        lr: float = LR,
        weight_decay: float = WEIGHT_DECAY,
        lr_step_size: int = LR_STEP_SIZE,
        lr_gamma: float = LR_GAMMA,
        temperature: float = TEMPERATURE,
        memory_momentum: float = MEMORY_MOMENTUM,
        memory_update: UpdateMode = UPDATE_MODE,
        loss_weight_visible: float = LOSS_WEIGHT,
        loss_weight_infrared: float = LOSS_WEIGHT,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0:
            raise ValueError(
                f"GURLitModule: need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}"
            )
        if lr_step_size < 1 or lr_gamma <= 0:
            raise ValueError(
                "GURLitModule: need lr_step_size >= 1 and lr_gamma > 0, got "
                f"{lr_step_size}, {lr_gamma}"
            )
        # Validates temperature, momentum and update mode now rather than at the first phase.
        ClusterMemory(temperature=temperature, momentum=memory_momentum, update_mode=memory_update)
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # Memory state: plain attributes, not buffers or submodules, so nothing is added to the
        # module tree after the trainer wraps it and nothing lands in the state dict
        # (docs/architecture.md §10.8); on_save_checkpoint stores it beside the weights.
        self._memories: dict[str, ClusterMemory] = {}
        self._routing: dict[str, str] = {}
        self._prototypes = Prototypes()
        self._pending: list[tuple[str, Tensor, Tensor]] = []
        self._gur_epoch: int | None = None
        # False for a phase the re-clustering skipped: its steps train nothing.
        self._phase_trains = True

    @property
    def feature_dim(self) -> int:
        """Feature dimension D of the backbone (``backbone.feature_dim``)."""
        dim = getattr(self.backbone, "feature_dim", None)
        if dim is None:
            raise AttributeError("the backbone has no feature_dim attribute")
        return int(dim)

    # ------------------------------------------------------------------ memories

    def set_memories(self, memories: Mapping[str, Tensor], routing: Mapping[str, str]) -> None:
        """Install new cluster memories and say which one each modality trains against.

        Examples of ``(memories, routing)``: ADC phases ``({"visible": C_v, "infrared": C_i},
        {"visible": "visible", "infrared": "infrared"})``; stage 3 ``({"shared": C},
        {"visible": "shared", "infrared": "shared"})``; stage 2 after CMLU, visible samples carry
        infrared labels and train against the infrared memory (docs/method.md §9.3, §17.3).

        Args:
            memories: Name → ``(K, D)`` centroids; stored as L2-normalised fp32 rows on this
                module's device (docs/method.md §7.4).
            routing: Modality (``"visible"`` / ``"infrared"``) → memory name.

        Raises:
            ValueError: On an unknown modality, a routing to a missing memory, or centroids of
                the wrong shape.
        """
        if not memories:
            raise ValueError("set_memories: no memories given")
        if not routing:
            raise ValueError(
                "set_memories: routing is empty; map 'visible'/'infrared' to memories"
            )
        for modality, name in routing.items():
            if modality not in MODALITIES:
                raise ValueError(
                    f"set_memories: routing key {modality!r} is not a modality {MODALITIES}"
                )
            if name not in memories:
                raise ValueError(
                    f"set_memories: routing {modality!r} -> {name!r}, but the memories are "
                    f"{sorted(memories)}"
                )
        dim = getattr(self.backbone, "feature_dim", None)
        built: dict[str, ClusterMemory] = {}
        for name, centroids in memories.items():
            if not isinstance(centroids, Tensor):
                raise ValueError(
                    f"set_memories: memory {name!r} must be a (K, D) tensor, got "
                    f"{type(centroids).__name__}"
                )
            if centroids.ndim == 2 and dim is not None:
                if centroids.shape[1] != dim:
                    raise ValueError(
                        f"set_memories: memory {name!r} has D={centroids.shape[1]}, the backbone "
                        f"gives {dim}-d features"
                    )
            try:
                memory = ClusterMemory(
                    centroids.to(self.device),
                    temperature=self.hparams["temperature"],
                    momentum=self.hparams["memory_momentum"],
                    update_mode=self.hparams["memory_update"],
                )
            except ValueError as exc:
                raise ValueError(f"set_memories: memory {name!r}: {exc}") from exc
            built[name] = memory
        self._memories = built
        self._routing = dict(routing)
        self._pending = []
        log.debug(
            "memories set: %s; routing %s",
            {name: m.num_clusters for name, m in built.items()},
            self._routing,
        )

    @property
    def memories(self) -> Mapping[str, ClusterMemory]:
        """The installed memories by name (read-only view)."""
        return dict(self._memories)

    @property
    def routing(self) -> Mapping[str, str]:
        """Modality → memory name of the current phase."""
        return dict(self._routing)

    def memory_tensors(self) -> dict[str, Tensor]:
        """Copies of the current (trained) memory rows, ``name -> (K, D)`` fp32 unit rows."""
        return {
            name: memory.features.clone()
            for name, memory in self._memories.items()
            if memory.features is not None
        }

    @property
    def prototypes(self) -> Prototypes:
        """The trained memories kept across phases as CAE prototypes (docs/method.md §8, §17.7).

        Rows are fp32 on the CPU, where the clustering features are.
        """
        return self._prototypes

    def keep_prototypes(self, prototypes: Prototypes) -> None:
        """Replace the kept prototypes (the callback passes ``prototypes_after(...)``).

        Args:
            prototypes: The new prototypes; their rows are stored as detached fp32 CPU copies.
        """

        def cpu(rows: Tensor) -> Tensor:
            return rows.detach().float().cpu().clone()

        self._prototypes = Prototypes(
            cameras={key: cpu(rows) for key, rows in prototypes.cameras.items()},
            modalities={key: cpu(rows) for key, rows in prototypes.modalities.items()},
        )

    # ------------------------------------------------------------------ schedule

    @property
    def gur_epoch(self) -> int:
        """GUR epoch driving the LR schedule (``current_epoch`` until set)."""
        return self.current_epoch if self._gur_epoch is None else self._gur_epoch

    @gur_epoch.setter
    def gur_epoch(self, value: int) -> None:
        # Only recorded: the learning rate is written once per phase, in on_train_epoch_start.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"gur_epoch must be a non-negative int, got {value!r}")
        self._gur_epoch = value

    def begin_phase(self, gur_epoch: int, *, trains: bool) -> None:
        """Start a phase: its GUR epoch and whether it trains (the re-clustering callback).

        Called from the callback's ``on_train_epoch_start``, which Lightning runs before this
        module's own: :meth:`on_train_epoch_start` then derives the learning rate.

        Args:
            gur_epoch: The GUR epoch of the phase (drives the learning rate).
            trains: False when the phase was skipped (no usable clustering): every step of the
                phase then returns without a loss and without looking at the batch, so no
                gradient exists and no weight changes (Lightning still counts the steps).
        """
        self.gur_epoch = gur_epoch
        self._phase_trains = trains

    def lr_at(self, gur_epoch: int) -> float:
        """StepLR at a GUR epoch: ``lr · gamma^(gur_epoch // step_size)`` (docs/method.md §12)."""
        hp = self.hparams
        return float(hp["lr"] * hp["lr_gamma"] ** (gur_epoch // hp["lr_step_size"]))

    def _apply_lr_schedule(self) -> None:
        """Set every param group's lr from ``gur_epoch`` (derived, so a resume is exact).

        The only writer of the optimiser's learning rate, called once per phase from
        :meth:`on_train_epoch_start` (Adam is created with the same value).
        """
        trainer = self._trainer
        if trainer is None:
            return
        lr = self.lr_at(self.gur_epoch)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with coupled weight decay over the trainable parameters (docs/method.md §12).

        The frozen BN-neck bias is left out; memories are not parameters. The learning rate is
        set per GUR epoch in :meth:`on_train_epoch_start`, not by a Lightning scheduler, since a
        Lightning epoch is one phase of a GUR epoch (docs/method.md §17.22, §18.2).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(
            params, lr=self.lr_at(self.gur_epoch), weight_decay=self.hparams["weight_decay"]
        )

    def on_train_epoch_start(self) -> None:
        """Check the phase can train, put the memories on this device, derive the lr.

        Raises:
            RuntimeError: When a phase that trains starts without memories (no re-clustering
                callback installed any).
        """
        if self._phase_trains and not self._memories:
            raise RuntimeError(
                "GURLitModule: no cluster memories are set at the start of training. "
                "set_memories(...) must run before fit reaches training: is the re-clustering "
                "callback configured?"
            )
        for memory in self._memories.values():
            memory.to(self.device)
        self._apply_lr_schedule()

    @property
    def bn_replicas(self) -> int:
        """R, the DataParallel replicas whose BatchNorm the backbone reproduces (1: plain BN)."""
        return int(getattr(self.backbone, "bn_replicas", 1))

    def sync_buffers(self) -> None:
        """Make the BatchNorm buffers equal on every rank before features are extracted.

        Without SyncBatchNorm each rank tracked BN statistics on its own batches: they are
        averaged. With DataParallel-exact BatchNorm (R > 1) the statistics are virtual replica
        0's, on rank 0: they are broadcast (docs/architecture.md §11.5.5). No-op with one
        process. Called on every rank at every phase end by the re-clustering callback.
        """
        if self.bn_replicas > 1:
            broadcast_buffers(self)
        else:
            average_buffers(self)

    def setup(self, stage: str) -> None:
        """Give this process its share of the backbone's virtual DataParallel replicas.

        Raises:
            ValueError: When ``model.bn_replicas`` is not a multiple of the process count.
        """
        set_processes = getattr(self.backbone, "set_processes", None)
        if set_processes is not None and self._trainer is not None:
            set_processes(self.trainer.world_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the GUR epoch, R and the memory state (tensors and plain data only).

        The memory state is what a run resumed from a phase-end checkpoint cannot recompute:
        the memories installed for the next phase, their routing and the prototypes
        (``cluster_memories``: ``memories`` name -> (K, D) rows, ``routing``,
        ``camera_prototypes`` ``"<modality>/<camera>"`` -> (K, D), ``modality_prototypes``).
        """
        checkpoint[_CKPT_GUR_EPOCH] = self._gur_epoch
        checkpoint[_CKPT_BN_REPLICAS] = self.bn_replicas
        checkpoint[_CKPT_MEMORIES] = {
            "memories": {
                name: memory.features.detach().cpu().clone()
                for name, memory in self._memories.items()
                if memory.features is not None
            },
            "routing": dict(self._routing),
            "camera_prototypes": {
                f"{m}/{camera}": rows.clone()
                for (m, camera), rows in self._prototypes.cameras.items()
            },
            "modality_prototypes": {
                m: rows.clone() for m, rows in self._prototypes.modalities.items()
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the GUR epoch and the memory state (the lr is re-derived at the next phase).

        Raises:
            ValueError: When the checkpoint was trained with another ``model.bn_replicas``:
                its running statistics and its optimiser state belong to another regime.
        """
        saved = int(checkpoint.get(_CKPT_BN_REPLICAS, 1))
        if saved != self.bn_replicas:
            raise ValueError(
                f"the checkpoint was trained with model.bn_replicas={saved}, this run has "
                f"model.bn_replicas={self.bn_replicas}: resume with model.bn_replicas={saved} "
                "(or start a new run)"
            )
        self._gur_epoch = checkpoint.get(_CKPT_GUR_EPOCH)
        state = checkpoint.get(_CKPT_MEMORIES)
        if state is not None:  # absent from older checkpoints, which Reclustering refuses
            self._load_memory_state(state)

    def _load_memory_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` stored, bit for bit.

        The rows are taken as saved, not re-normalised by ``ClusterMemory.reset``: the resumed
        memories equal the uninterrupted run's exactly. They stay on the CPU until
        :meth:`on_train_epoch_start` moves them to the module's device.
        """
        memories: dict[str, ClusterMemory] = {}
        for name, rows in state["memories"].items():
            memory = ClusterMemory(
                temperature=self.hparams["temperature"],
                momentum=self.hparams["memory_momentum"],
                update_mode=self.hparams["memory_update"],
            )
            memory.features = rows.float().contiguous()
            memories[name] = memory
        self._memories = memories
        self._routing = dict(state["routing"])
        self._pending = []
        self._prototypes = Prototypes(
            cameras={
                (key.split("/")[0], int(key.split("/")[1])): rows
                for key, rows in state["camera_prototypes"].items()
            },
            modalities=dict(state["modality_prototypes"]),
        )

    # ------------------------------------------------------------------ training

    def forward(
        self, x_visible: Tensor | None = None, x_infrared: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Run the backbone (see ``DualStreamResNet.forward``)."""
        return self.backbone(x_visible, x_infrared)

    def _to_format(self, x: Tensor) -> Tensor:
        """Apply the channels-last option to an input batch."""
        return (
            x.contiguous(memory_format=torch.channels_last) if self.hparams["channels_last"] else x
        )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """One ADC step (docs/method.md §6.2).

        Args:
            batch: ``{"visible": {"img": (B,3,H,W), "img2": (B,3,H,W), "label": (B,)},
                "infrared": {"img": (B',3,H,W), "label": (B',)}}`` (other keys ignored). Without
                ``img2`` the visible stream has one view; a modality may be absent. In a skipped
                phase it is whatever the loader yields (a step index) and is not read.
            batch_idx: Index of the batch in the phase.

        Returns:
            The weighted loss, or None in a phase the re-clustering skipped
            (:meth:`begin_phase`): no gradient, so the optimiser changes no weight.
        """
        self._pending = []
        if not self._phase_trains:
            return None
        if not self._memories:
            raise RuntimeError("GURLitModule.training_step: no memories set (see set_memories)")
        images: dict[str, Tensor] = {}
        labels: dict[str, Tensor] = {}
        for modality in MODALITIES:
            if modality not in batch:
                continue
            if modality not in self._routing:
                raise ValueError(
                    f"training_step: the batch has {modality!r} images but no memory is routed "
                    f"for them (routing {self._routing})"
                )
            part = batch[modality]
            if modality == "visible" and "img2" in part:
                images[modality], labels[modality] = duplicate_views(
                    part["img"], part["img2"], part["label"]
                )
            else:
                images[modality], labels[modality] = part["img"], part["label"]
        if not images:
            raise ValueError(f"training_step: batch has neither modality (keys {list(batch)})")
        f_v, f_i = self.backbone(
            self._to_format(images["visible"]) if "visible" in images else None,
            self._to_format(images["infrared"]) if "infrared" in images else None,
        )
        feats = {"visible": f_v, "infrared": f_i}
        logits = {
            modality: self._memories[self._routing[modality]].logits(feats[modality])
            for modality in images
        }
        loss, parts = adc_loss(
            logits.get("visible"),
            labels.get("visible"),
            logits.get("infrared"),
            labels.get("infrared"),
            weight_visible=self.hparams["loss_weight_visible"],
            weight_infrared=self.hparams["loss_weight_infrared"],
        )
        self._require_finite(loss, parts, batch_idx)
        # Visible before infrared: the explicit update order of a shared memory (§17.13).
        for stream in images:
            feat = feats[stream]
            assert feat is not None
            self._pending.append(
                (self._routing[stream], feat.detach().float(), labels[stream].detach())
            )
        n_images = sum(x.shape[0] for x in images.values())
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n_images)
        for stream, value in parts.items():
            self.log(f"train/loss_{stream}", value.detach(), batch_size=n_images)
        self.log("train/lr", self._current_lr(), batch_size=n_images)
        return loss

    def _require_finite(self, loss: Tensor, parts: Mapping[str, Tensor], batch_idx: int) -> None:
        """Stop training on a NaN/inf loss before backward corrupts the weights.

        Every rank takes the same decision (one boolean all-reduce), so no rank is left waiting
        in a collective. Lightning writes no checkpoint on an exception, so ``last.ckpt`` stays
        the one saved at the end of the previous phase.

        Raises:
            NonFiniteLossError: Naming the phase, batch, step, the loss terms and the last
                checkpoint.
        """
        finite = bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        if trainer is not None:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        # The run's phase-end checkpoint: ``last_model_path`` with ``save_last``, else the
        # ``best_model_path`` of a monitor-less ModelCheckpoint (the newest file it wrote).
        callbacks = getattr(trainer, "checkpoint_callbacks", None) or []
        last = next(
            (p for cb in callbacks for p in (cb.last_model_path, cb.best_model_path) if p), ""
        )
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        raise NonFiniteLossError(
            f"non-finite training loss {float(loss):.4g} ({terms or 'on another rank'}) in "
            f"phase {self.current_epoch} (GUR epoch {self.gur_epoch}), batch {batch_idx}, "
            f"global step {self.global_step}; training stopped. Last good checkpoint: "
            f"{last or 'none written yet'} (end of the previous phase; resume with "
            "ckpt_path=...). Try a lower model.lr or check the input images."
        )

    def _current_lr(self) -> float:
        """The optimizer's lr when attached to a trainer, else the schedule's value."""
        trainer = self._trainer
        if trainer is not None and trainer.optimizers:
            return float(trainer.optimizers[0].param_groups[0]["lr"])
        return self.lr_at(self.gur_epoch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Momentum-update the memories after the optimizer step, identically on every rank.

        The stashed ``(features, labels)`` of both streams are packed into one fp32 matrix
        (stream id, label, features), all-gathered in rank order, and applied stream by stream:
        visible samples of rank 0, 1, ..., then infrared samples of rank 0, 1, ...
        (docs/architecture.md §11.5.4, docs/method.md §17.13).
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        packed = torch.cat(
            [
                torch.cat(
                    [
                        feats.new_full((feats.shape[0], 1), float(stream)),
                        labels.to(feats).unsqueeze(1),
                        feats,
                    ],
                    dim=1,
                )
                for stream, (_, feats, labels) in enumerate(pending)
            ]
        )
        gathered = gather_tensors(packed)
        for stream, (name, _, _) in enumerate(pending):
            rows = gathered[gathered[:, 0] == stream]
            memory = self._memories[name]
            if memory.num_clusters >= _MAX_PACKED_LABEL:  # pragma: no cover - absurd K
                raise ValueError(f"memory {name!r} has too many clusters to gather labels")
            memory.update(rows[:, 2:], rows[:, 1].long())

    # ------------------------------------------------------------------ features

    def _modality_codes(
        self, modality: str | int | Tensor | Sequence[str | int], n: int
    ) -> Tensor:
        """Per-image modality codes (visible 0, infrared 1) as a ``(n,)`` long CPU tensor."""

        def code(value: str | int) -> int:
            if isinstance(value, str):
                if value not in MODALITY_INDEX:
                    raise ValueError(f"embed: unknown modality {value!r}; expected {MODALITIES}")
                return MODALITY_INDEX[value]
            if int(value) not in MODALITY_INDEX.values():
                raise ValueError(f"embed: modality code {value!r} is not 0 (visible) or 1")
            return int(value)

        if isinstance(modality, (str, int)):
            return torch.full((n,), code(modality), dtype=torch.long)
        if isinstance(modality, Tensor):
            codes = modality.detach().to("cpu").long().flatten()
            bad = codes[(codes != 0) & (codes != 1)]
            if bad.numel():
                raise ValueError(f"embed: modality codes must be 0 or 1, got {bad[:5].tolist()}")
        else:
            codes = torch.tensor([code(v) for v in modality], dtype=torch.long)
        if codes.shape[0] != n:
            raise ValueError(f"embed: {codes.shape[0]} modality codes for {n} images")
        return codes

    @torch.no_grad()
    def embed(
        self,
        images: Tensor,
        modality: str | int | Tensor | Sequence[str | int],
        *,
        flip: bool = True,
        renormalize: bool = False,
    ) -> Tensor:
        """Features ``e(x) = ½(ẑ(x) + ẑ(flip_lr(x)))`` in eval mode (docs/method.md §7.1).

        Each image goes through the stem of its own modality; a mixed batch is split, run
        through the shared body in one call and put back in order. The module's train/eval
        state is restored afterwards.

        Args:
            images: ``(B, 3, H, W)``.
            modality: ``"visible"`` / ``"infrared"`` (or 0 / 1) for the whole batch, or a
                ``(B,)`` tensor / sequence of per-image modalities.
            flip: Average with the horizontally flipped image (the reference does).
            renormalize: L2-normalise the average: ``True`` for test features
                (docs/method.md §13.1), ``False`` for clustering features (docs/method.md §7.1).

        Returns:
            ``(B, D)`` fp32 on this module's device.
        """
        n = images.shape[0]
        codes = self._modality_codes(modality, n)
        if n == 0:
            dim = int(getattr(self.backbone, "feature_dim", 0))
            return torch.empty((0, dim), device=self.device)
        states = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            images = self._to_format(images.to(self.device))
            index = {c: (codes == c).nonzero().flatten() for c in (0, 1)}
            inputs: list[Tensor | None] = []
            for c in (0, 1):
                x = images[index[c].to(images.device)] if index[c].numel() else None
                if x is not None and flip:
                    x = torch.cat([x, x.flip(3)])
                inputs.append(x)
            outputs = self.backbone(inputs[0], inputs[1])
            out: Tensor | None = None
            for c, z in zip((0, 1), outputs, strict=True):
                if z is None:
                    continue
                z = z.float()
                if flip:
                    half = z.shape[0] // 2
                    z = 0.5 * (z[:half] + z[half:])
                if out is None:
                    out = z.new_empty((n, z.shape[1]))
                out[index[c].to(out.device)] = z
            assert out is not None  # n > 0, so at least one modality had images
            return F.normalize(out, dim=1) if renormalize else out
        finally:
            for module, mode in states:
                module.training = mode
