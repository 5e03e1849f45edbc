"""The parameters and the world of the SynVI pretrained start (docs/synthetic.md).

The pretrained start plays ImageNet's role for SynVI: a network trained once to classify the
visible identities of a SynVI world of its own. This module holds what needs no torch: its
parameters (:class:`PretrainConfig`, the one place of their defaults, which the config schema
validates at composition) and its world (:func:`build_pretrain_world`): streams rooted in their
own namespace (:data:`~gur_lightning.synvi.world.NAMESPACE_PRETRAIN`), so that no identity,
camera or scene can be one of a benchmark tree's whatever either seed, and visible cameras only.
Training, caching and loading live in :mod:`gur_lightning.pretrain`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gur_lightning.models.options import SUPPORTED_DEPTHS
from gur_lightning.synvi.config import PRESETS, SynVIConfig, resolve_config
from gur_lightning.synvi.layouts import build_world
from gur_lightning.synvi.world import MAX_SEED, NAMESPACE_PRETRAIN, World

#: Layout whose camera model the pretraining world borrows: any number of cameras, each indoor
#: or outdoor at random. Only their visible sensors are used.
WORLD_LAYOUT = "llcm"


@dataclass(frozen=True)
class PretrainConfig:
    """Every parameter of the pretrained start; the one place of their defaults.

    The entry points take ``depth``, ``height``, ``width``, ``preset``, ``pad`` and ``flip_p``
    from the run's config (the benchmark's) and any field from
    ``model.backbone.synvi_pretrain``; everything else keeps the default below. The defaults
    fit a ResNet-18 at 64 x 32 into about three minutes on two CPU threads (docs/synthetic.md,
    "The pretrained start").

    Attributes:
        depth: ResNet depth (18, 34 or 50): the benchmark network's.
        height: Image height: the network's input height.
        width: Image width: the network's input width.
        preset: SynVI difficulty preset of the pretraining world: the benchmark's.
        seed: Seed of the pretraining world (inside its own namespace) and of the training.
        num_ids: Pretraining identities (classes).
        num_cameras: Visible cameras of the pretraining world.
        cameras_per_identity: Cameras that see one identity (consecutive cameras, starting at
            identity ``pid``'s ``(pid - 1) % num_cameras``); ``None``: every camera. Fewer
            cameras keep the start from learning that one person in two cameras is one class,
            as ImageNet never shows it (measured in docs/synthetic.md, "The pretrained
            start": it made every method worse on SynVI, so the default stays ``None``).
        images_per_camera: Images of one identity in one camera.
        epochs: Passes over the images.
        batch_size: Images per optimiser step.
        lr: Peak learning rate of Adam (one-cycle schedule).
        weight_decay: Adam (coupled) weight decay.
        label_smoothing: Label smoothing of the cross-entropy.
        pad: Zero padding before the random crop, pixels (the benchmark's ``data.augment.pad``).
        flip_p: Horizontal-flip probability.
        colour_jitter: Largest relative change of brightness, contrast and saturation.
    """

    depth: int = 18
    height: int = 64
    width: int = 32
    preset: str = "default"
    seed: int = 0
    num_ids: int = 400
    num_cameras: int = 4
    cameras_per_identity: int | None = None
    images_per_camera: int = 4
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    pad: int = 2
    flip_p: float = 0.5
    colour_jitter: float = 0.2

    def __post_init__(self) -> None:
        """Refuse values out of range, naming the field."""
        integers = {
            "depth": self.depth,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
            "num_ids": self.num_ids,
            "num_cameras": self.num_cameras,
            "images_per_camera": self.images_per_camera,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "pad": self.pad,
        }
        for name, value in integers.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SynVI pretraining: {name} must be an integer, got {value!r}")
        for name in ("lr", "weight_decay", "label_smoothing", "flip_p", "colour_jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"SynVI pretraining: {name} must be a number, got {value!r}")
            # 1 and 1.0 are one setting: store floats so that they hash alike.
            object.__setattr__(self, name, float(value))
        checks = [
            (self.depth in SUPPORTED_DEPTHS, "depth", f"one of {SUPPORTED_DEPTHS}"),
            (self.preset in PRESETS, "preset", f"one of {PRESETS}"),
            (0 <= self.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}]"),
            (self.num_ids >= 2, "num_ids", ">= 2 (a classifier needs two classes)"),
            (self.num_cameras >= 1, "num_cameras", ">= 1"),
            (
                self.cameras_per_identity is None
                or (
                    isinstance(self.cameras_per_identity, int)
                    and not isinstance(self.cameras_per_identity, bool)
                    and 1 <= self.cameras_per_identity <= self.num_cameras
                ),
                "cameras_per_identity",
                f"None (every camera) or an integer in [1, num_cameras={self.num_cameras}]",
            ),
            (self.images_per_camera >= 1, "images_per_camera", ">= 1"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 2, "batch_size", ">= 2 (BatchNorm needs two images)"),
            (self.lr > 0, "lr", "> 0"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.pad >= 0, "pad", ">= 0"),
            (0 <= self.flip_p <= 1, "flip_p", "a probability in [0, 1]"),
            (0 <= self.colour_jitter < 1, "colour_jitter", "in [0, 1)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"SynVI pretraining: {name}={getattr(self, name)!r} is invalid: "
                    f"expected {expected}"
                )
        # The world's own checks (image size, identity count) with their own messages.
        world_config(self)

    @property
    def num_images(self) -> int:
        """Training images: every identity in each of its cameras."""
        return self.num_ids * self.cameras_of_identity * self.images_per_camera

    @property
    def cameras_of_identity(self) -> int:
        """Cameras that see one identity (``cameras_per_identity`` with ``None`` resolved)."""
        return self.num_cameras if self.cameras_per_identity is None else self.cameras_per_identity

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self)


def pretrain_config(options: Mapping[str, Any]) -> PretrainConfig:
    """Build a :class:`PretrainConfig` from named options (config values, command line).

    Args:
        options: Field values; fields not named keep their defaults.

    Returns:
        The validated configuration.

    Raises:
        ValueError: On an unknown option name or a value out of range, naming it.
    """
    fields = [f.name for f in dataclasses.fields(PretrainConfig)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown SynVI pretraining option(s) {unknown}; expected some of {fields}"
        )
    return PretrainConfig(**dict(options))


def world_config(cfg: PretrainConfig) -> SynVIConfig:
    """The :class:`~gur_lightning.synvi.config.SynVIConfig` of the pretraining world.

    The preset's knobs as a benchmark tree of that preset has them, at the network's input
    size; every identity in every camera (full coverage, as every ImageNet class is labelled).
    """
    return resolve_config(
        WORLD_LAYOUT,
        preset=cfg.preset,
        num_ids=cfg.num_ids,
        height=cfg.height,
        width=cfg.width,
        overrides={
            "images_per_camera": cfg.images_per_camera,
            "num_cameras": cfg.num_cameras,
            "visible_presence": 1.0,
            "infrared_presence": 0.0,
            "missing_modality_fraction": 0.0,
        },
    )


def build_pretrain_world(cfg: PretrainConfig) -> World:
    """Draw the pretraining world: own namespace, visible cameras only.

    Args:
        cfg: The pretraining parameters.

    Returns:
        A :class:`~gur_lightning.synvi.world.World` whose streams are rooted at
        ``(cfg.seed, NAMESPACE_PRETRAIN)`` and whose cameras capture visible light only, so
        :func:`~gur_lightning.synvi.render.render_image` refuses any infrared image of it.
    """
    world = build_world(WORLD_LAYOUT, world_config(cfg), (cfg.seed, NAMESPACE_PRETRAIN))
    cameras = {
        cam: dataclasses.replace(camera, modalities=("visible",))
        for cam, camera in world.cameras.items()
    }
    return dataclasses.replace(world, cameras=cameras)
