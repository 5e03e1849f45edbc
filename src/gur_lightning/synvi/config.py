"""SynVI parameters: layouts, per-layout defaults, difficulty presets and their validation.

Every number that shapes a SynVI tree lives in :class:`SynVIConfig`. A tree is identified by the
resolved configuration (layout defaults, then the preset, then the caller's overrides), so two
calls that spell the same configuration differently share one cache entry (docs/synthetic.md,
"Properties it must have").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

#: Layouts SynVI writes (docs/synthetic.md, "Layouts it writes"; docs/method.md §2).
LAYOUTS: tuple[str, ...] = ("sysu", "regdb", "llcm")

#: Difficulty presets (docs/synthetic.md, "What follows for the generator").
PRESETS: tuple[str, ...] = ("easy", "default", "hard")

#: Bumped whenever a change to the generator changes its output for equal parameters, so that
#: cached trees written by an older generator are regenerated instead of silently reused.
GENERATOR_VERSION = 2

#: Smallest image SynVI renders: below this the silhouette cues are no longer resolvable.
MIN_HEIGHT = 32
MIN_WIDTH = 16

#: SYSU-MM01 identity split 296 / 99 / 96 (docs/method.md §2.1), used to split ``num_ids``.
SYSU_SPLIT = (296, 99, 96)
#: LLCM identity split 713 train / 351 test (the released data set).
LLCM_SPLIT = (713, 351)


@dataclass(frozen=True)
class SynVIConfig:
    """Every parameter of a SynVI tree except the layout, seed and preset name.

    Attributes:
        num_ids: Number of identities in the tree (all splits together).
        height: Written image height in pixels.
        width: Written image width in pixels.
        images_per_camera: Images of one identity in one camera and modality.
        num_cameras: Cameras of the layout (SYSU 6 and RegDB 1 are fixed by the layout; LLCM
            cameras each capture both modalities and their number may change).
        visible_presence: Probability that an identity appears in a given visible camera.
        infrared_presence: Probability that an identity appears in a given infrared camera.
        missing_modality_fraction: Fraction of training identities absent from one whole
            modality, as some SYSU-MM01 training identities are.
        cue_rate: Probability of each optional silhouette cue (bag, hat, coat, pattern); more
            cues make identities easier to tell apart in both modalities.
        twin_fraction: Fraction of identities made colour twins (same colours, other shape) or
            shape twins (same shape, other colours) of another identity.
        thermal_material_tie: Weight in [0, 1] of the garment material in its thermal intensity;
            the rest is per-identity randomness independent of the visible colour.
        outfit_pool: 0: every identity draws its own garment colours and thermal values. n > 0:
            the tree has n colour outfits and, independently, n thermal outfits; each identity
            wears one of each (with a small jitter), as many people wear the same black jacket
            and jeans. Colour and intensity then narrow a person down to a group, and identity
            lives in the modality-invariant shape cues (docs/synthetic.md).
        thermal_outfit_pool: Number of thermal outfits when ``outfit_pool > 0``; ``None``: as
            many as colour outfits. More thermal than colour outfits gives infrared images more
            of a person's own appearance, as the reflectance of garments under the cameras'
            infrared lamps varies more between people than their colour categories do
            (docs/synthetic.md, "Calibration against the real data").
        thermal_spread: Contrast multiplier of the garments' thermal values about their mean
            (1: as drawn; larger values separate the parts, and the person from the background,
            in infrared).
        clutter: Number of background objects per camera scene.
        clutter_contrast: Contrast in [0, 1] of background objects against the scene base.
        camera_bias: Strength in [0, 1] of per-camera illumination, white balance and gain.
        view_mix: Probability that an image's view (front / back / side) is not its camera's
            dominant view.
        vis_noise: Standard deviation of visible sensor noise (intensities in [0, 1]).
        ir_noise: Standard deviation of infrared sensor noise (intensities in [0, 1]).
        blur: Largest Gaussian blur radius in written pixels.
        occlusion: Probability that a foreground object occludes part of the person.
        pose_jitter: Scale of the per-image pose, crop and scale jitter (1 = nominal).
        brightness_jitter: Standard deviation of the per-image brightness factor.
        illumination: Strength in [0, 1] of the visible light's variation, which infrared
            cameras (under their own active illumination) do not see: indoor cameras dim and
            warm, outdoor ones brighter and cooler, and per image a change of exposure and
            colour temperature, with sensor noise growing in the dark (docs/synthetic.md,
            "Visible light"). 0 leaves the visible images as the camera bias alone makes them.
        jpeg_quality: JPEG quality of written ``.jpg`` files (fixed for determinism).
    """

    num_ids: int
    height: int
    width: int
    images_per_camera: int
    num_cameras: int
    visible_presence: float
    infrared_presence: float
    missing_modality_fraction: float
    cue_rate: float
    twin_fraction: float
    thermal_material_tie: float
    outfit_pool: int
    thermal_spread: float
    clutter: int
    clutter_contrast: float
    camera_bias: float
    view_mix: float
    vis_noise: float
    ir_noise: float
    blur: float
    occlusion: float
    pose_jitter: float
    brightness_jitter: float
    illumination: float = 0.0
    thermal_outfit_pool: int | None = None
    jpeg_quality: int = 90

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self)


#: Sizes per layout. SYSU: ~210 ids split 127/42/41 like 296/99/96 and ~4k images; RegDB:
#: 10 images per identity per modality as in the real set; LLCM: 9 dual-modality cameras.
LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "sysu": {
        "num_ids": 210,
        "images_per_camera": 4,
        "num_cameras": 6,
        "visible_presence": 0.75,
        "infrared_presence": 0.8,
        "missing_modality_fraction": 0.08,
    },
    "regdb": {
        "num_ids": 100,
        "images_per_camera": 10,
        "num_cameras": 1,
        "visible_presence": 1.0,
        "infrared_presence": 1.0,
        "missing_modality_fraction": 0.0,
    },
    "llcm": {
        "num_ids": 150,
        "images_per_camera": 3,
        "num_cameras": 9,
        "visible_presence": 0.35,
        "infrared_presence": 0.3,
        "missing_modality_fraction": 0.05,
    },
}

#: Difficulty knobs per preset. ``default`` follows the levers docs/synthetic.md lists for a CPU
#: demo (moderate clutter, low infrared noise, frequent silhouette cues, thermal values partly tied
#: to material); ``hard`` keeps the research-grade difficulty of the first calibration study.
PRESET_KNOBS: dict[str, dict[str, Any]] = {
    "easy": {
        "cue_rate": 0.9,
        "twin_fraction": 0.1,
        "thermal_material_tie": 0.8,
        "outfit_pool": 4,
        "thermal_spread": 1.0,
        "clutter": 3,
        "clutter_contrast": 0.3,
        "camera_bias": 0.3,
        "view_mix": 0.15,
        "vis_noise": 0.01,
        "ir_noise": 0.015,
        "blur": 0.4,
        "occlusion": 0.0,
        "pose_jitter": 0.5,
        "brightness_jitter": 0.05,
    },
    "default": {
        "cue_rate": 0.9,
        "twin_fraction": 0.1,
        "thermal_material_tie": 0.2,
        "outfit_pool": 4,
        "thermal_spread": 2.5,
        "clutter": 4,
        "clutter_contrast": 0.4,
        "camera_bias": 0.4,
        "view_mix": 0.3,
        "vis_noise": 0.02,
        "ir_noise": 0.015,
        "blur": 0.7,
        "occlusion": 0.1,
        "pose_jitter": 1.0,
        "brightness_jitter": 0.1,
        "illumination": 1.0,
        "thermal_outfit_pool": 32,
    },
    "hard": {
        "cue_rate": 0.55,
        "twin_fraction": 0.35,
        "thermal_material_tie": 0.3,
        "outfit_pool": 0,
        "thermal_spread": 1.0,
        "clutter": 12,
        "clutter_contrast": 0.9,
        "camera_bias": 1.0,
        "view_mix": 0.45,
        "vis_noise": 0.04,
        "ir_noise": 0.07,
        "blur": 1.2,
        "occlusion": 0.25,
        "pose_jitter": 1.5,
        "brightness_jitter": 0.2,
    },
}

#: Knobs that must lie in [0, 1].
_UNIT_KNOBS = (
    "visible_presence",
    "infrared_presence",
    "missing_modality_fraction",
    "cue_rate",
    "twin_fraction",
    "thermal_material_tie",
    "clutter_contrast",
    "camera_bias",
    "view_mix",
    "occlusion",
    "illumination",
)
#: Knobs that must be >= 0.
_NONNEGATIVE_KNOBS = (
    "thermal_spread",
    "vis_noise",
    "ir_noise",
    "blur",
    "pose_jitter",
    "brightness_jitter",
)
#: Largest LLCM camera count: file names carry the camera in two digits (``_cNN_``).
_MAX_LLCM_CAMERAS = 99
#: Smallest identity count per layout: every split must receive at least one identity.
_MIN_IDS = {"sysu": 3, "regdb": 2, "llcm": 2}


#: Preset and seed of a tree when the caller names none (the CLI, :func:`generate_synvi` and the
#: ``data.synvi`` node of the training config take them from here).
DEFAULT_PRESET = "default"
DEFAULT_SEED = 0


def resolve_config(
    layout: str,
    *,
    preset: str = DEFAULT_PRESET,
    num_ids: int | None = None,
    height: int = 128,
    width: int = 64,
    overrides: dict[str, Any] | None = None,
) -> SynVIConfig:
    """Merge layout defaults, a difficulty preset and overrides into a validated config.

    Args:
        layout: One of :data:`LAYOUTS`.
        preset: One of :data:`PRESETS`.
        num_ids: Identity count; ``None`` takes the layout's default.
        height: Written image height in pixels.
        width: Written image width in pixels.
        overrides: Any other :class:`SynVIConfig` field by name (e.g. ``images_per_camera``,
            ``clutter``).

    Returns:
        The resolved :class:`SynVIConfig`.

    Raises:
        ValueError: On an unknown layout, preset or override name, or a value out of range.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"SynVI layout must be one of {LAYOUTS}, got {layout!r}")
    if preset not in PRESETS:
        raise ValueError(f"SynVI preset must be one of {PRESETS}, got {preset!r}")
    values: dict[str, Any] = {**LAYOUT_DEFAULTS[layout], **PRESET_KNOBS[preset]}
    values["height"] = height
    values["width"] = width
    if num_ids is not None:
        values["num_ids"] = num_ids
    fields = {f.name: f for f in dataclasses.fields(SynVIConfig)}
    for name, value in (overrides or {}).items():
        if name not in fields:
            raise ValueError(
                f"unknown SynVI option {name!r}; expected one of {sorted(fields)} "
                "(or the keyword arguments seed, num_ids, preset, height, width)"
            )
        values[name] = value
    config = SynVIConfig(**{name: values[name] for name in fields if name in values})
    _validate(layout, config)
    return config


def _validate(layout: str, cfg: SynVIConfig) -> None:
    """Raise ``ValueError`` naming the first option of ``cfg`` that is out of range."""
    for name in (
        "num_ids",
        "height",
        "width",
        "images_per_camera",
        "num_cameras",
        "clutter",
        "outfit_pool",
    ):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"SynVI option {name} must be an integer, got {value!r}")
    if cfg.num_ids < _MIN_IDS[layout]:
        raise ValueError(
            f"SynVI num_ids must be >= {_MIN_IDS[layout]} for layout {layout!r} "
            f"(every split needs an identity), got {cfg.num_ids}"
        )
    if cfg.num_ids > 9999:
        raise ValueError(f"SynVI num_ids must be <= 9999 (4-digit ids), got {cfg.num_ids}")
    if cfg.height < MIN_HEIGHT or cfg.width < MIN_WIDTH:
        raise ValueError(
            f"SynVI image size must be at least {MIN_HEIGHT}x{MIN_WIDTH} (height x width), "
            f"got {cfg.height}x{cfg.width}"
        )
    if not 1 <= cfg.images_per_camera <= 9999:
        raise ValueError(
            f"SynVI images_per_camera must be in [1, 9999], got {cfg.images_per_camera}"
        )
    fixed_cameras = {"sysu": 6, "regdb": 1}
    if layout in fixed_cameras and cfg.num_cameras != fixed_cameras[layout]:
        raise ValueError(
            f"SynVI layout {layout!r} has a fixed camera set ({fixed_cameras[layout]}); "
            f"num_cameras={cfg.num_cameras} can only be changed for 'llcm'"
        )
    if layout == "llcm" and not 1 <= cfg.num_cameras <= _MAX_LLCM_CAMERAS:
        raise ValueError(
            f"SynVI num_cameras must be in [1, {_MAX_LLCM_CAMERAS}] for 'llcm', "
            f"got {cfg.num_cameras}"
        )
    if cfg.thermal_outfit_pool is not None and (
        isinstance(cfg.thermal_outfit_pool, bool)
        or not isinstance(cfg.thermal_outfit_pool, int)
        or cfg.thermal_outfit_pool < 1
    ):
        raise ValueError(
            "SynVI option thermal_outfit_pool must be null or an integer >= 1, "
            f"got {cfg.thermal_outfit_pool!r}"
        )
    for name in ("clutter", "outfit_pool"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"SynVI option {name} must be >= 0, got {getattr(cfg, name)}")
    for name in _UNIT_KNOBS:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"SynVI option {name} must be a number in [0, 1], got {value!r}")
    for name in _NONNEGATIVE_KNOBS:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or float(value) < 0.0:
            raise ValueError(f"SynVI option {name} must be a number >= 0, got {value!r}")
    if isinstance(cfg.jpeg_quality, bool) or not isinstance(cfg.jpeg_quality, int):
        raise ValueError(f"SynVI option jpeg_quality must be an integer, got {cfg.jpeg_quality!r}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ValueError(f"SynVI option jpeg_quality must be in [1, 100], got {cfg.jpeg_quality}")


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse a ``--set KEY=VALUE`` command-line option of the SynVI tools.

    Args:
        text: ``KEY=VALUE``; the value is read as JSON (numbers, booleans, null) or kept as a
            string.

    Returns:
        ``(key, value)``.

    Raises:
        argparse.ArgumentTypeError: When ``text`` has no ``=`` or no key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """Add the repeatable ``--set KEY=VALUE`` option the SynVI tools share.

    Args:
        parser: The tool's parser; ``args.set`` becomes a list of ``(key, value)`` pairs
            (:func:`parse_set_option`).
        example: The help text's subject and example, e.g. ``"SynVIConfig option, e.g. --set
            clutter=0"``.
    """
    parser.add_argument(
        "--set",
        type=parse_set_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"any other {example} (repeatable)",
    )
