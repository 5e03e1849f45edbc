"""Structured Hydra schemas: a misspelled key or a wrong type fails when the config is composed.

Every YAML file under ``conf/`` is merged onto these dataclasses (registered in Hydra's
ConfigStore as the ``schema`` group: ``schema: train`` for ``gur_lightning.train``, overridden by
``schema: eval`` in ``conf/eval.yaml`` for ``gur_lightning.evaluate``), so ``cluster.esp=0.5`` or
``data.height=abc`` is rejected by Hydra itself, naming the key. Hydra adds a ``+key=value``
override with ``force_add``, past the schema's struct mode, so :func:`validate_config` first
re-checks the composed config against its schema (:func:`check_schema`): ``+cluster.esp=0.5``
fails there, naming the key. Value ranges (eps must be positive, K must divide the batch...) are
checked right after, before anything is built.

Every default is defined once (docs/architecture.md §11.2): a setting that a library constructor
also takes has its default in that library's torch-free options module
(:mod:`gur_lightning.data.options`, :mod:`gur_lightning.models.options`,
:mod:`gur_lightning.clustering.options`, the schedule's and SynVI's constants), and the field
below refers to it; a setting only a run has (the schedule's budget, the evaluation, the
callbacks' options) has its default here, and its constructor takes it without a default. The
YAML files under ``conf/`` hold only what differs from these defaults, and
:func:`constructor_kwargs` hands a node to the object it configures, field by field by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from gur_lightning.clustering.options import (
    DEFAULT_CAE_TEMPERATURE,
    DEFAULT_EPS,
    DEFAULT_EPS_INTRA_CAMERA,
    DEFAULT_K1,
    DEFAULT_K2,
    DEFAULT_KERNELS,
    DEFAULT_KNN_BACKEND,
    DEFAULT_MIN_SAMPLES,
    KERNEL_CHOICES,
    KNN_BACKENDS,
)
from gur_lightning.data import options as data_defaults
from gur_lightning.data.readers import DATASET_NAMES
from gur_lightning.models import options as model_defaults
from gur_lightning.schedule import ScheduleConfig, ScheduleError, validate_schedule
from gur_lightning.synvi.config import DEFAULT_PRESET, DEFAULT_SEED

if TYPE_CHECKING:
    from gur_lightning.synvi.pretraining import PretrainConfig

#: The training regimes of the ``recipe`` config group (docs/recipes.md).
RECIPES: tuple[str, ...] = ("official", "fixed")
#: The training methods of the ``method`` config group (``conf/method/*.yaml``).
METHODS: tuple[str, ...] = ("gur", "adca", "supervised")


#: ``data.name`` when no data config names one (and so the SynVI layout, which must equal it).
DEFAULT_DATASET = "sysu"


@dataclass
class SynVITreeConfig:
    """Which SynVI tree to generate into ``data.root`` before training (Hydra key ``data.synvi``).

    Only the arguments of :func:`gur_lightning.synvi.generate_synvi` that select a tree, with the
    generator's own defaults. Every rendering parameter (image counts, clutter, noise...) is a
    field of the generator's :class:`gur_lightning.synvi.config.SynVIConfig`, resolved from the
    layout and the preset (docs/synthetic.md).

    Attributes:
        layout: Raw layout written: ``sysu``, ``regdb`` or ``llcm`` (must equal ``data.name``).
        seed: Generator seed (same seed, same bytes).
        num_ids: Number of identities (None: the layout's default).
        preset: Difficulty preset: ``easy``, ``default`` or ``hard``.
    """

    layout: str = DEFAULT_DATASET
    seed: int = DEFAULT_SEED
    num_ids: int | None = None
    preset: str = DEFAULT_PRESET


@dataclass
class AugmentConfig:
    """Training augmentations (docs/method.md §4; Hydra key ``data.augment``).

    The reference's values are tuned for 288 x 144 inputs: its 10-pixel pad shifts the person by
    up to 7 % of the width. Smaller inputs should scale the pad with the width (SynVI's 64 x 32:
    2 pixels), or the random crop moves the person by a third of the image.

    Attributes:
        pad: Zero padding on every side before the random crop (reference 10).
        flip_p: Horizontal-flip probability (0.5).
        erasing_p: ``ChannelRandomErasing`` probability (0.5).
        adap_gray_p: Grey probability inside the infrared ``ChannelAdapGray`` (0.5).
        intensity_remap_p: Probability of a random non-monotonic grey-level curve on infrared
            images and the second visible view (not in the reference: 0). SynVI turns it on:
            its infrared intensities carry nothing of the visible colours, so only shape can
            bridge the modalities (README, "Calibrating SynVI").
        intensity_remap_knots: Linear pieces of that curve.
    """

    pad: int = data_defaults.PAD
    flip_p: float = data_defaults.FLIP_P
    erasing_p: float = data_defaults.ERASING_P
    adap_gray_p: float = data_defaults.ADAP_GRAY_P
    intensity_remap_p: float = data_defaults.INTENSITY_REMAP_P
    intensity_remap_knots: int = data_defaults.INTENSITY_REMAP_KNOTS


@dataclass
class DataConfig:
    """The data set and the loaders (Hydra group ``data``).

    Attributes:
        name: Raw layout read: ``sysu`` (SYSU-MM01), ``regdb`` or ``llcm``.
        root: The data set's root folder, as distributed.
        trial: RegDB split (1..10); the SYSU/LLCM gallery draws use trials 0..9 at test time.
        holdout_val: RegDB: hold out part of the training identities as a validation split.
        synvi: When set, the SynVI tree it selects is generated into ``root`` first.
        height: Network input height (reference 288).
        width: Network input width (reference 144).
        num_instances: K, images per pseudo-identity in a batch (reference 16).
        visible_batch_size: Visible images per step and rank before the second view (128).
        infrared_batch_size: Infrared images per step and rank (256).
        num_workers: Loader worker processes.
        eval_batch_size: Batch size of feature extraction for clustering and evaluation.
        shrink_batch: When a clustering finds fewer pseudo-identities than a batch needs, train
            the phase on a smaller batch (all identities) instead of skipping it.
        min_identities: Fewest pseudo-identities per batch and rank a shrunk batch may have;
            below it the phase is skipped.
        augment: Training augmentations.
        check: Before training, decode every image of every split and compare the data set's
            counts with its published figures (:mod:`gur_lightning.data.check`): a corrupt file
            or a protocol-breaking difference stops the run before its first step. Cached by the
            tree's listing, so an unchanged data set is decoded once.
    """

    name: str = DEFAULT_DATASET
    root: str = MISSING
    trial: int = data_defaults.TRIAL
    holdout_val: bool = False
    synvi: SynVITreeConfig | None = None
    height: int = data_defaults.HEIGHT
    width: int = data_defaults.WIDTH
    num_instances: int = data_defaults.NUM_INSTANCES
    visible_batch_size: int = data_defaults.VISIBLE_BATCH_SIZE
    infrared_batch_size: int = data_defaults.INFRARED_BATCH_SIZE
    num_workers: int = data_defaults.NUM_WORKERS
    eval_batch_size: int = data_defaults.EVAL_BATCH_SIZE
    shrink_batch: bool = data_defaults.SHRINK_BATCH
    min_identities: int = data_defaults.MIN_IDENTITIES
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    check: bool = True


@dataclass
class BackboneConfig:
    """Two-stream ResNet (docs/method.md §3).

    Attributes:
        depth: ResNet depth: 50 (real data, reference) or 18 (CPU default for SynVI).
        pretrained: Local path of ImageNet weights, ``torchvision`` for torchvision's local cache,
            ``synvi`` for the SynVI pretrained start (built into ``paths.data_dir`` on first use,
            docs/synthetic.md "The pretrained start"), or None to train from scratch. Never
            downloaded.
        synvi_pretrain: With ``pretrained=synvi``: None, or a mapping of
            :class:`gur_lightning.synvi.pretraining.PretrainConfig` fields to override (e.g.
            ``model.backbone.synvi_pretrain={epochs:2}``); the depth, image size, preset, pad
            and flip are otherwise the run's own. Free-form (``Any``) so that a whole mapping can
            be given on the command line; its keys are checked by :func:`validate_config`.
        last_stride: Stride of layer4 (reference 1).
        gem_p: GeM pooling exponent (reference 3, fixed).
        non_local: AGW non-local blocks (off in the reference).
    """

    depth: int = model_defaults.DEPTH
    pretrained: str | None = None
    synvi_pretrain: Any = None
    last_stride: int = model_defaults.LAST_STRIDE
    gem_p: float = model_defaults.GEM_P
    non_local: bool = False


@dataclass
class MemoryConfig:
    """Cluster memories (docs/method.md §6.1).

    Attributes:
        temperature: InfoNCE temperature tau (0.05).
        momentum: Weight of the OLD memory row in each update (reference 0.1, i.e. 90 % new).
        update_mode: ``mean`` (every sample, in order) or ``hard`` (hardest positive per cluster).
    """

    temperature: float = model_defaults.TEMPERATURE
    momentum: float = model_defaults.MEMORY_MOMENTUM
    update_mode: str = model_defaults.UPDATE_MODE


@dataclass
class ModelConfig:
    """The LightningModule (Hydra group ``model``).

    Attributes:
        backbone: Network settings.
        memory: Memory settings.
        lr: Adam learning rate (3.5e-4).
        weight_decay: Adam (coupled) weight decay (5e-4).
        loss_weight_visible: Weight of the visible InfoNCE term.
        loss_weight_infrared: Weight of the infrared InfoNCE term.
        channels_last: Use the channels-last memory format (faster on CPUs with bf16).
        bn_replicas: R: every BatchNorm computes its training statistics per virtual
            ``nn.DataParallel`` replica, as the reference's R GPUs did (each stream's batch split
            into R contiguous chunks; running statistics from replica 0 only). 1 is one
            BatchNorm over the whole batch (SyncBatchNorm under DDP). Under DDP with D
            processes each holds R / D replicas. The official recipe uses 4.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    lr: float = model_defaults.LR
    weight_decay: float = model_defaults.WEIGHT_DECAY
    loss_weight_visible: float = model_defaults.LOSS_WEIGHT
    loss_weight_infrared: float = model_defaults.LOSS_WEIGHT
    channels_last: bool = False
    bn_replicas: int = model_defaults.BN_REPLICAS


@dataclass
class ClusterConfig:
    """Pseudo-labelling (docs/method.md §7-9; Hydra group ``cluster``).

    The defaults are the pseudo-label library's (:mod:`gur_lightning.clustering.options`: the
    reference's SYSU-MM01 values).

    Attributes:
        eps: DBSCAN radius of the per-modality clustering of stage 2 (0.6 SYSU, 0.3 RegDB).
        eps_intra_camera: Radius of the per-camera clustering of stage 1 (0.55).
        eps_inter_modality: Radius of the joint clustering of stage 3. Defaults to ``eps``
            (the reference uses one radius for both): an interpolation of the sibling key,
            resolved when the config is read, so ``cluster.eps=0.45`` moves both and the
            recorded config shows the radius that ran.
        min_samples: DBSCAN core-point size, the point included.
        k1: k-reciprocal neighbourhood size.
        k2: Query-expansion neighbourhood size.
        knn_backend: ``auto``, ``torch`` or ``faiss``.
        kernels: ``auto``, ``numba`` or ``numpy``: compiled or numpy pseudo-label kernels.
        cae_temperature: Softmax temperature of cross-memory association embeddings (0.05).
        cae_legacy_slicing: Reproduce the reference's camera-CAE slicing bug (§17.1).
        oracle: Ground-truth labels instead of clustering (the supervised upper bound only).
    """

    eps: float = DEFAULT_EPS
    eps_intra_camera: float = DEFAULT_EPS_INTRA_CAMERA
    eps_inter_modality: float = II(".eps")
    min_samples: int = DEFAULT_MIN_SAMPLES
    k1: int = DEFAULT_K1
    k2: int = DEFAULT_K2
    knn_backend: str = DEFAULT_KNN_BACKEND
    kernels: str = DEFAULT_KERNELS
    cae_temperature: float = DEFAULT_CAE_TEMPERATURE
    cae_legacy_slicing: bool = False
    oracle: bool = False


@dataclass
class EvalConfig:
    """When and how to evaluate.

    Attributes:
        val_every_n_epochs: Validation (never on the test set) every N GUR epochs; 0 disables
            it. The reference picked its "best" checkpoint by test mAP (docs/method.md §17.12);
            we report the last epoch, and a validation only ever scores held-out identities.
        test_after_fit: Run the data set's full test protocol on the last-epoch weights.
        max_trials: Use only the first N gallery trials (None: all, as published tables).
        within_modality: Also report the within-modality diagnostic (visible -> visible and
            infrared -> infrared on the test identities, Market-style; docs/method.md §13.4).
        select_on_test: Also report the figure the reference published: the test set scored
            after every GUR epoch from ``select_on_test_from_epoch`` on (first protocol, first
            gallery draw), the weights with the best mAP kept and evaluated with the full
            protocol, as ``test_selected_on_test/...`` beside the last-epoch ``test/...``.
            Optimistic by construction (a model chosen on its own test set); the official
            recipe turns it on for comparison with published tables, nothing else uses it.
        select_on_test_from_epoch: First GUR epoch scored for that selection (reference: 6).
        min_trained_share: Least share of the schedule's phases that must have trained (a
            phase is skipped when its clustering is unusable: DBSCAN found no cluster, too
            few clusters for a batch); a run below it fails with ``UntrainedRunError`` instead
            of reporting the (nearly) untrained network's figures. In [0, 1]; 0 disables.
    """

    val_every_n_epochs: int = 0
    test_after_fit: bool = True
    max_trials: int | None = None
    within_modality: bool = False
    select_on_test: bool = False
    select_on_test_from_epoch: int = 6
    min_trained_share: float = 0.5


@dataclass
class PicturesConfig:
    """Dashboard pictures, :mod:`gur_lightning.callbacks.pictures` (key ``callbacks.pictures``).

    Attributes:
        enabled: Draw the pseudo-label quality curves after every GUR epoch and, when
            ``eval.test_after_fit`` is on, the ranking lists of a few test queries after fit.
        num_queries: Queries drawn per test protocol (first gallery trial).
        topk: Gallery items shown per query.
    """

    enabled: bool = True
    num_queries: int = 4
    topk: int = 10


@dataclass
class CallbacksConfig:
    """The run's own Lightning callbacks (Hydra group ``callbacks``; docs/architecture.md §11.3).

    :func:`gur_lightning.train.build_callbacks` builds them in this order, after any callbacks
    handed to ``train`` (each hook runs them in list order):

    1. ``graceful_stop``: SIGTERM / SIGINT stop the run at the next batch end, resumable.
    2. The re-clustering callback (always: it is the method; the ``cluster`` group sets it).
    3. ``last_checkpoint``: ``checkpoints/last.ckpt`` at every phase end, the resume points.
    4. With ``trainer.strategy.start_method=spawn`` (``trainer=ddp_cpu``): the spawned
       workers' logging and process-group teardown (not optional: the run needs them).
    5. With ``trainer.enable_progress_bar``: the progress bar that names the phase.
    6. With ``eval.val_every_n_epochs > 0``: validation on held-out identities.
    7. With ``eval.select_on_test`` (``recipe=official``): the reference's test-set selection.
    8. ``pictures``: the cluster-quality curves, then the ranking lists.

    ``trainer.fast_dev_run`` turns ``last_checkpoint`` and ``pictures`` off.

    Attributes:
        graceful_stop: Handle SIGTERM / SIGINT
            (:class:`~gur_lightning.callbacks.signals.GracefulStop`); off, a signal ends the run
            as Lightning's own handling does.
        last_checkpoint: Write ``checkpoints/last.ckpt`` at every phase end; off, the run
            cannot be resumed (and Lightning writes no checkpoint of its own either).
        pictures: The picture callbacks.
    """

    graceful_stop: bool = True
    last_checkpoint: bool = True
    pictures: PicturesConfig = field(default_factory=PicturesConfig)


@dataclass
class PathsConfig:
    """Output locations.

    Attributes:
        root_dir: The project root (for relative data paths in the SynVI experiments).
        log_dir: Where Hydra run folders are created.
        output_dir: The current run's folder (Hydra's runtime output dir).
        data_dir: Default folder for generated SynVI trees.
    """

    root_dir: str = "."
    log_dir: str = "logs"
    output_dir: str = "."
    data_dir: str = "data"


@dataclass
class TrainConfig:
    """Top-level schema of ``conf/train.yaml`` (``gur_lightning.train``).

    Attributes:
        data: Data set and loaders.
        model: Network, memories and optimiser.
        cluster: Pseudo-labelling.
        schedule: Stage schedule.
        trainer: Keyword arguments of ``lightning.Trainer`` (``max_epochs`` is derived from the
            schedule and must not be set).
        logger: Logger node with ``_target_`` (or None).
        paths: Output locations.
        eval: Evaluation settings.
        callbacks: Which of the run's own callbacks exist, and their options.
        task_name: Name of the run folder family.
        experiment: Name of the experiment preset that was applied.
        method: The method that was trained, set by the ``method`` group (``gur``, ``adca``:
            ADCA's ADC, ``supervised``: ground-truth labels). The one record of it: schedule
            names are derived from it (``${method}_sysu``...).
        recipe: The training regime that was applied (``official``: what the published
            numbers were trained with; ``fixed``: our corrections; docs/recipes.md).
        seed: Global seed (also of every training draw, with the phase index and the rank).
        ckpt_path: Checkpoint to resume from: an earlier run's ``checkpoints/last.ckpt``.
        tags: Free-form tags for the logger.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: Any = field(default_factory=dict)
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    task_name: str = "train"
    experiment: str = "none"
    method: str = "gur"
    recipe: str = "fixed"
    seed: int = 1
    ckpt_path: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalRunConfig(TrainConfig):
    """Top-level schema of ``conf/eval.yaml`` (``gur_lightning.evaluate``).

    Attributes:
        ckpt: The checkpoint to evaluate (``features=model``).
        features: ``model``, ``untrained`` or ``raw_pixels``.
    """

    ckpt: str | None = None
    features: str = "model"


#: Keys only ``gur_lightning.evaluate`` knows, with what to use in training instead.
EVALUATE_ONLY_KEYS: dict[str, str] = {
    "ckpt": (
        "use ckpt_path=PATH to resume training from a checkpoint, or "
        "python -m gur_lightning.evaluate ckpt=PATH to evaluate one"
    ),
    "features": "evaluating features is python -m gur_lightning.evaluate features=...",
}


def constructor_kwargs(
    node: Any,
    target: Callable[..., Any],
    *,
    rename: Mapping[str, str] | None = None,
    exclude: Collection[str] = (),
) -> dict[str, Any]:
    """Keyword arguments of ``target`` from a schema node: how a config part becomes an object.

    The one mapping from the schema to the constructors (docs/architecture.md §11.3): every
    field of ``node`` goes to the parameter of the same name (or the name ``rename`` gives it),
    resolved, with nested nodes as plain dicts and lists. A field that ``target`` does not take
    is an error, unless ``exclude`` names it (a field read elsewhere), so a field added to the
    schema must be wired somewhere and a renamed parameter cannot silently drop a setting.
    Parameters without a field keep the constructor's default (its library constant).

    Args:
        node: A schema node (``DictConfig``) or a mapping of field values.
        target: The class or function to call.
        rename: Field name -> parameter name, where they differ.
        exclude: Fields not passed to ``target``.

    Returns:
        The keyword arguments, in the node's field order.

    Raises:
        TypeError: Naming the field and the callable when ``target`` has no such parameter.
    """
    rename = rename or {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    values = cast(Mapping[str, Any], node)
    params = inspect.signature(target).parameters
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in exclude:
            continue
        name = rename.get(key, key)
        if name not in params:
            raise TypeError(
                f"config field {key!r} has no parameter {name!r} in "
                f"{getattr(target, '__qualname__', target)}: wire it (rename) or exclude it"
            )
        kwargs[name] = value
    return kwargs


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    # A group, so that conf/eval.yaml can swap the schema of the train config it includes.
    store.store(group="schema", name="train", node=TrainConfig, package="_global_")
    store.store(group="schema", name="eval", node=EvalRunConfig, package="_global_")


class ConfigError(ValueError):
    """A composed configuration with an unknown key or a value out of its valid range."""


def evaluate_only_hint(key: str) -> str | None:
    """What to use instead of an evaluation-only key given to training, None for other keys."""
    return EVALUATE_ONLY_KEYS.get(key.lstrip("+~").split(".")[0])


def check_schema(cfg: DictConfig, schema: type[TrainConfig] = TrainConfig) -> None:
    """Check every key of a composed config against its schema, ``+key=value`` overrides included.

    Hydra adds ``+key=value`` overrides with ``force_add``, which bypasses the struct mode of the
    schema's nodes, so a misspelled ``+cluster.esp=0.5`` would otherwise be kept and ignored. The
    config is merged onto a fresh copy of the schema, which rejects unknown keys and wrong types.
    The free-form nodes (``trainer``, ``logger``) accept anything, as in the schema. The
    ``hydra`` node (present with ``return_hydra_config``) is Hydra's own and is left out.

    Args:
        cfg: The composed configuration.
        schema: :class:`TrainConfig` (training) or :class:`EvalRunConfig` (evaluation).

    Raises:
        ConfigError: Naming the first unknown key (with a hint for evaluation-only keys given
            to training) or the key whose value has the wrong type.
    """
    # Plain containers: a typed node merged onto its own type would keep its added keys.
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    try:
        OmegaConf.merge(OmegaConf.structured(schema), plain)
    except ConfigKeyError as err:
        key = _error_key(err)
        hint = evaluate_only_hint(key) if schema is TrainConfig else None
        advice = (
            f"{key} is for gur_lightning.evaluate only; {hint}"
            if hint
            else "check its spelling against conf/ and the dataclasses of gur_lightning.config"
        )
        raise ConfigError(
            f"unknown config key {key!r} (not in the {schema.__name__} schema): {advice}"
        ) from err
    except ValidationError as err:
        raise ConfigError(f"config value {_error_key(err)} has the wrong type: {err.msg}") from err


def _error_key(err: ConfigKeyError | ValidationError) -> str:
    """The dotted key an OmegaConf error is about (its ``full_key``, else the child key)."""
    key = err.full_key or (str(err.key) if err.key is not None else "")
    return key or "<unknown>"


def _check(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"config value {key}={value!r} is invalid: expected {expected}")


def paired_visible_views(bn_replicas: int, world: int) -> bool:
    """Whether ranks are paired to hold the two visible views of the same images.

    DataParallel gives every replica one view of the visible images (it scatters
    ``cat(view 1, view 2)``). A rank holding an odd number of the R virtual replicas (R = 4 on
    4 devices) would mix both views in one replica, so then rank ``r`` and rank
    ``r + world / 2`` draw the same visible images, view 1 and view 2
    (:meth:`gur_lightning.data.datamodule.VIReIDDataModule.visible_layout`).

    Args:
        bn_replicas: R (``model.bn_replicas``).
        world: Training processes.
    """
    local = bn_replicas // world if bn_replicas > 1 else 0
    return world > 1 and local % 2 == 1 and world % 2 == 0


def named_device_count(devices: Any) -> int | None:
    """Devices per node that a ``trainer.devices`` value names (Lightning's rules).

    Args:
        devices: A count, a list of device ids, a ``"0,1"`` string, or ``auto`` / -1 / None.

    Returns:
        The count, or None for ``auto``, -1 and None (decided by the machine at run time).

    Raises:
        ValueError: When the value is none of these.
    """
    if devices is None:
        return None
    if OmegaConf.is_list(devices) or (
        isinstance(devices, Sequence) and not isinstance(devices, str)
    ):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:  # "0,1": device ids
        return len([d for d in text.split(",") if d.strip()])
    return int(text)


def declared_processes(trainer: Any) -> int | None:
    """Training processes a trainer config asks for (devices x nodes), None when not fixed.

    ``devices: auto`` (or -1) depends on the machine, so it is only known inside the run; a
    value Lightning would refuse is left for Lightning to name.
    """
    trainer = trainer or {}
    try:
        count = named_device_count(trainer.get("devices", 1))
    except ValueError:
        return None
    if count is None:
        return None
    return count * int(trainer.get("num_nodes", 1) or 1)


def _validate_replicas(cfg: DictConfig | TrainConfig) -> None:
    """``model.bn_replicas`` against the batch sizes, the process count and SyncBatchNorm."""
    d, r = cfg.data, cfg.model.bn_replicas
    _check(
        not isinstance(r, bool) and isinstance(r, int) and r >= 1,
        "model.bn_replicas",
        r,
        "an integer >= 1 (the DataParallel replicas whose BatchNorm is reproduced)",
    )
    # The visible stream holds two views of every image.
    for key, rows in (
        ("visible_batch_size", 2 * d.visible_batch_size),
        ("infrared_batch_size", d.infrared_batch_size),
    ):
        _check(
            rows % r == 0,
            f"data.{key}",
            getattr(d, key),
            f"a batch whose {rows} rows split into model.bn_replicas={r} equal replica chunks",
        )
    trainer = cfg.trainer or {}
    processes = declared_processes(trainer)
    if processes is not None and processes > 1:
        _check(
            r == 1 or r % processes == 0,
            "model.bn_replicas",
            r,
            f"a multiple of the {processes} training processes (trainer devices x nodes)",
        )
        paired = paired_visible_views(r, processes)
        for key in ("visible_batch_size", "infrared_batch_size"):
            size = getattr(d, key)
            shards = processes // 2 if paired and key.startswith("visible") else processes
            _check(
                size % (shards * d.num_instances) == 0,
                f"data.{key}",
                size,
                f"a global batch that splits into {shards} shards x whole identities of "
                f"data.num_instances={d.num_instances} images",
            )
    _check(
        r == 1 or not trainer.get("sync_batchnorm", False),
        "trainer.sync_batchnorm",
        trainer.get("sync_batchnorm"),
        f"false with model.bn_replicas={r}: SyncBatchNorm would replace the per-replica "
        "BatchNorm by one over all processes (recipe=official sets it false)",
    )


def synvi_pretrain_config(cfg: DictConfig | TrainConfig) -> PretrainConfig:
    """The SynVI pretraining parameters of ``model.backbone.pretrained=synvi``.

    The pretrained start plays ImageNet's role for the run's benchmark, so the run decides what
    must match it: the network depth, the input size, the SynVI preset (when the data is a SynVI
    tree) and the pad-crop and flip augmentation; ``model.backbone.synvi_pretrain`` overrides
    any other field (docs/synthetic.md, "The pretrained start").

    Returns:
        The validated pretraining parameters.

    Raises:
        ValueError: On an unknown field, a value out of range, or a ``depth`` override (the
            weights must fit the configured network).
    """
    # Imported here: the pretraining pulls in torch, which composing a config does not need.
    from gur_lightning.synvi.pretraining import pretrain_config

    d, b = cfg.data, cfg.model.backbone
    given = b.synvi_pretrain
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(
            f"model.backbone.synvi_pretrain must be a mapping of option: value, got {given!r}"
        )
    overrides = dict(given or {})
    if "depth" in overrides:
        raise ValueError(
            "model.backbone.synvi_pretrain.depth cannot be set: the pretrained start has the "
            f"network's depth (model.backbone.depth={b.depth})"
        )
    options: dict[str, Any] = {
        "depth": b.depth,
        "height": d.height,
        "width": d.width,
        "pad": d.augment.pad,
        "flip_p": d.augment.flip_p,
    }
    if d.synvi is not None:
        options["preset"] = d.synvi.preset
    return pretrain_config({**options, **overrides})


def validate_config(
    cfg: DictConfig | TrainConfig, schema: type[TrainConfig] = TrainConfig
) -> None:
    """Check the keys, value ranges and cross-field constraints of a composed config.

    Args:
        cfg: The composed configuration.
        schema: Its schema: :class:`TrainConfig` for training, :class:`EvalRunConfig` for
            evaluation (keys added with ``+`` are checked against it).

    Raises:
        ConfigError: Naming the first unknown key, or the first key whose value is out of range.
    """
    if isinstance(cfg, DictConfig):
        check_schema(cfg, schema)
    d, c, m = cfg.data, cfg.cluster, cfg.model
    _check(d.name in DATASET_NAMES, "data.name", d.name, f"one of {DATASET_NAMES}")
    if d.name == "regdb":
        _check(1 <= d.trial <= 10, "data.trial", d.trial, "a RegDB trial in 1..10")
    if d.synvi is not None:
        _check(d.synvi.layout == d.name, "data.synvi.layout", d.synvi.layout, f"'{d.name}'")
    for key in ("height", "width", "num_instances", "eval_batch_size"):
        _check(getattr(d, key) > 0, f"data.{key}", getattr(d, key), "a positive integer")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0")
    _check(d.min_identities >= 1, "data.min_identities", d.min_identities, ">= 1")
    _check(d.augment.pad >= 0, "data.augment.pad", d.augment.pad, ">= 0")
    for key in ("flip_p", "erasing_p", "adap_gray_p", "intensity_remap_p"):
        value = getattr(d.augment, key)
        _check(0 <= value <= 1, f"data.augment.{key}", value, "a probability in [0, 1]")
    knots = d.augment.intensity_remap_knots
    _check(knots >= 1, "data.augment.intensity_remap_knots", knots, "an integer >= 1")
    for key in ("visible_batch_size", "infrared_batch_size"):
        size = getattr(d, key)
        _check(
            size >= d.num_instances and size % d.num_instances == 0,
            f"data.{key}",
            size,
            f"a multiple of data.num_instances={d.num_instances} (K instances per identity)",
        )
    for key in ("eps", "eps_intra_camera", "eps_inter_modality"):
        value = getattr(c, key)
        _check(0 < value < 1, f"cluster.{key}", value, "a Jaccard radius in (0, 1)")
    _check(c.min_samples >= 1, "cluster.min_samples", c.min_samples, ">= 1")
    _check(c.k1 >= 1, "cluster.k1", c.k1, ">= 1")
    _check(1 <= c.k2 <= c.k1, "cluster.k2", c.k2, f"in 1..cluster.k1={c.k1}")
    backend = c.knn_backend
    _check(backend in KNN_BACKENDS, "cluster.knn_backend", backend, f"one of {KNN_BACKENDS}")
    _check(c.kernels in KERNEL_CHOICES, "cluster.kernels", c.kernels, f"one of {KERNEL_CHOICES}")
    _check(c.cae_temperature > 0, "cluster.cae_temperature", c.cae_temperature, "> 0")
    _check(m.lr > 0, "model.lr", m.lr, "> 0")
    _check(m.weight_decay >= 0, "model.weight_decay", m.weight_decay, ">= 0")
    _check(m.memory.temperature > 0, "model.memory.temperature", m.memory.temperature, "> 0")
    _check(0 <= m.memory.momentum < 1, "model.memory.momentum", m.memory.momentum, "in [0, 1)")
    _check(
        m.memory.update_mode in ("mean", "hard"),
        "model.memory.update_mode",
        m.memory.update_mode,
        "'mean' or 'hard'",
    )
    _check(
        m.backbone.depth in model_defaults.SUPPORTED_DEPTHS,
        "model.backbone.depth",
        m.backbone.depth,
        f"one of {model_defaults.SUPPORTED_DEPTHS}",
    )
    if m.backbone.pretrained == model_defaults.SYNVI_PRETRAINED:
        try:
            synvi_pretrain_config(cfg)
        except ValueError as err:
            raise ConfigError(
                f"config value model.backbone.synvi_pretrain is invalid for "
                f"model.backbone.pretrained={model_defaults.SYNVI_PRETRAINED}: {err}"
            ) from err
    else:
        _check(
            m.backbone.synvi_pretrain is None,
            "model.backbone.synvi_pretrain",
            m.backbone.synvi_pretrain,
            f"unset unless model.backbone.pretrained={model_defaults.SYNVI_PRETRAINED} "
            "(it would be ignored)",
        )
    _validate_replicas(cfg)
    _check(cfg.method in METHODS, "method", cfg.method, f"one of {METHODS}")
    _check(cfg.recipe in RECIPES, "recipe", cfg.recipe, f"one of {RECIPES}")
    pictures = cfg.callbacks.pictures
    for key in ("num_queries", "topk"):
        value = getattr(pictures, key)
        _check(value >= 1, f"callbacks.pictures.{key}", value, "an integer >= 1")
    _check(
        cfg.eval.select_on_test_from_epoch >= 0,
        "eval.select_on_test_from_epoch",
        cfg.eval.select_on_test_from_epoch,
        ">= 0",
    )
    _check(
        not cfg.eval.select_on_test or cfg.eval.test_after_fit,
        "eval.select_on_test",
        cfg.eval.select_on_test,
        "false when eval.test_after_fit=false (the selected weights are scored after fit)",
    )
    _check(
        "max_epochs" not in (cfg.trainer or {}),
        "trainer.max_epochs",
        (cfg.trainer or {}).get("max_epochs"),
        "unset: the number of Lightning epochs is the schedule's phase count",
    )
    _check(
        cfg.eval.val_every_n_epochs >= 0,
        "eval.val_every_n_epochs",
        cfg.eval.val_every_n_epochs,
        ">= 0",
    )
    _check(
        cfg.eval.max_trials is None or cfg.eval.max_trials >= 1,
        "eval.max_trials",
        cfg.eval.max_trials,
        "null (every trial) or >= 1",
    )
    _check(
        0 <= cfg.eval.min_trained_share <= 1,
        "eval.min_trained_share",
        cfg.eval.min_trained_share,
        "a share of the phases in [0, 1] (0 disables the check)",
    )
    schedule = OmegaConf.to_object(cfg.schedule) if isinstance(cfg, DictConfig) else cfg.schedule
    if not isinstance(schedule, ScheduleConfig):
        raise ConfigError(f"config node schedule is a {type(schedule).__name__}, not a schedule")
    try:
        validate_schedule(schedule)
    except ScheduleError as err:
        raise ConfigError(str(err)) from err
