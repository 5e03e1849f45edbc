"""The SynVI world: identities with latent attributes, cameras and their background scenes.

Everything here is drawn from ``numpy.random.default_rng`` streams keyed by the seed and a tag
(:func:`rng_for`), never from a shared global stream, so that any image can be rendered in any
order or process and still come out the same (docs/synthetic.md, "Properties it must have").

Identity follows docs/synthetic.md, "Why it must be hard in the right way": a :class:`Shape` holds
the modality-invariant cues (body proportions, garment silhouettes, carried objects, hats,
pattern geometry); an :class:`Appearance` holds the visible colours and, independently of them,
the thermal intensities, which are partly tied to the garment material.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from gur_lightning.data.samples import Modality
from gur_lightning.synvi.config import SynVIConfig

# --------------------------------------------------------------------------- random streams

#: Stream tags: each kind of random decision draws from its own keyed stream.
TAG_POPULATION = 1
TAG_CAMERA = 2
TAG_SCENE = 3
TAG_IMAGE = 4
TAG_SPLIT = 5
TAG_COVERAGE = 6
TAG_NAMES = 7
TAG_LIGHT = 8

#: Integer code of each layout inside stream keys.
LAYOUT_CODE = {"sysu": 1, "regdb": 2, "llcm": 3}
#: Integer code of each modality inside stream keys.
MODALITY_CODE = {"visible": 0, "infrared": 1}


#: Namespace word of the pretraining world (docs/synthetic.md, "The pretrained start"). Its
#: streams are keyed ``(seed, NAMESPACE_PRETRAIN, tag, ...)`` where a benchmark tree's are
#: ``(seed, tag, ...)``: the second key word is a small ``TAG_*`` in every benchmark stream and
#: this value in every pretraining stream, so no pretraining stream can equal a benchmark's
#: whatever either seed is (seeds are below 2**32, one key word each).
NAMESPACE_PRETRAIN = 0x5359_4E50
#: Largest seed: numpy splits a larger integer into several 32-bit key words, which would let
#: one key read as another.
MAX_SEED = 2**32 - 1

#: The root of a world's streams: a benchmark tree's seed, or ``(seed, namespace)`` for a world
#: drawn in its own namespace (the pretraining world).
StreamRoot = int | tuple[int, int]


def rng_for(seed: StreamRoot, *keys: int) -> np.random.Generator:
    """Return the random stream keyed by ``(seed, *keys)``.

    Args:
        seed: The tree's seed (in ``[0, MAX_SEED]``), or ``(seed, namespace)`` for a world in
            its own namespace.
        *keys: Stream tag followed by the indices that identify the decision (identity,
            camera, image...).

    Returns:
        An independent generator: equal keys give equal streams in any process.
    """
    root = list(seed) if isinstance(seed, tuple) else [seed]
    return np.random.default_rng(np.random.SeedSequence([*root, *keys]))


# --------------------------------------------------------------------------- label map codes

#: Background labels are 0..15 (scene base, ground, clutter objects); person labels follow.
NUM_SCENE_LABELS = 16
SKIN = 16
HAIR = 17
HAT = 18
TOP = 19
TOP_PATTERN = 20
COAT = 21
COAT_PATTERN = 22
BOTTOM = 23
BOTTOM_PATTERN = 24
SHOES = 25
BAG = 26
STRAP = 27
OCCLUDER = 28
NUM_LABELS = 29
#: Person parts (rows of an identity's colour and thermal tables), in label order.
PERSON_LABELS = tuple(range(SKIN, OCCLUDER))
NUM_PARTS = len(PERSON_LABELS)

# --------------------------------------------------------------------------- attribute codes

HAIR_SHORT, HAIR_LONG, HAIR_BUN, HAIR_CROPPED = range(4)
HAT_NONE, HAT_CAP, HAT_BEANIE, HAT_BRIM = range(4)
SLEEVE_NONE, SLEEVE_SHORT, SLEEVE_LONG = range(3)
COAT_NONE, COAT_JACKET, COAT_LONG = range(3)
BOTTOM_TROUSERS, BOTTOM_WIDE, BOTTOM_SHORTS, BOTTOM_SKIRT, BOTTOM_LONG_SKIRT = range(5)
SHOES_LOW, SHOES_BOOTS = range(2)
CARRY_NONE, CARRY_BACKPACK, CARRY_SHOULDER_BAG, CARRY_HANDBAG, CARRY_SUITCASE = range(5)
PATTERN_NONE, PATTERN_HSTRIPES, PATTERN_VSTRIPES, PATTERN_CHECKS = range(4)
PATTERN_LOGO, PATTERN_BLOCK, PATTERN_SASH = range(4, 7)
LOGO_CIRCLE, LOGO_SQUARE, LOGO_TRIANGLE, LOGO_DIAMOND = range(4)
VIEW_FRONT, VIEW_BACK, VIEW_SIDE = range(3)
OCCLUDER_BOTTOM, OCCLUDER_POLE, OCCLUDER_PASSER = range(3)

#: Visible garment palette (sRGB in [0, 1]): few, well separated colours so that colour twins
#: arise naturally as well as by construction.
PALETTE = np.array(
    [
        (0.08, 0.08, 0.09),  # black
        (0.92, 0.92, 0.90),  # white
        (0.50, 0.50, 0.52),  # grey
        (0.12, 0.16, 0.38),  # navy
        (0.20, 0.42, 0.78),  # blue
        (0.75, 0.12, 0.14),  # red
        (0.16, 0.52, 0.24),  # green
        (0.72, 0.64, 0.44),  # khaki
        (0.42, 0.26, 0.14),  # brown
        (0.92, 0.80, 0.18),  # yellow
        (0.90, 0.55, 0.68),  # pink
        (0.45, 0.24, 0.58),  # purple
        (0.93, 0.48, 0.12),  # orange
        (0.86, 0.80, 0.68),  # beige
        (0.40, 0.44, 0.20),  # olive
        (0.10, 0.50, 0.52),  # teal
    ]
)
SKIN_TONES = np.array(
    [(0.96, 0.80, 0.68), (0.88, 0.68, 0.52), (0.74, 0.54, 0.38), (0.55, 0.38, 0.26)]
)
HAIR_COLOURS = np.array(
    [(0.06, 0.05, 0.05), (0.22, 0.14, 0.08), (0.45, 0.30, 0.16), (0.80, 0.68, 0.40)]
)
#: Thermal base intensity of each material (warm thin cotton ... cold padded down). Infrared
#: intensity follows material, not colour (docs/synthetic.md: "skin warm, garments by material").
MATERIAL_THERMAL = np.array([0.64, 0.52, 0.40, 0.24, 0.44, 0.30, 0.36])
COTTON, SYNTHETIC, WOOL, PADDED, DENIM, LEATHER, CANVAS = range(7)
#: Materials each garment part may be made of.
PART_MATERIALS: dict[int, tuple[int, ...]] = {
    HAT: (WOOL, COTTON, SYNTHETIC),
    TOP: (COTTON, SYNTHETIC, WOOL),
    COAT: (WOOL, PADDED, LEATHER, SYNTHETIC),
    BOTTOM: (DENIM, COTTON, WOOL, SYNTHETIC),
    SHOES: (LEATHER, SYNTHETIC),
    BAG: (LEATHER, SYNTHETIC, CANVAS),
    STRAP: (LEATHER, SYNTHETIC, CANVAS),
}
#: Skin and hair thermal ranges: skin is the warmest surface, hair insulates.
SKIN_THERMAL = (0.80, 0.95)
HAIR_THERMAL = (0.38, 0.56)
#: Mean garment intensity of the default draw (materials and the uniform part): the centre about
#: which ``thermal_spread`` stretches garment intensities.
GARMENT_THERMAL_MEAN = 0.43
#: Garment intensities stay inside this range after stretching, so that prints stay visible.
GARMENT_THERMAL_RANGE = (0.05, 0.95)
#: Infrared contrast of a printed pattern against its garment (prints change emissivity), so
#: that pattern geometry survives the modality gap while its colour does not.
PATTERN_THERMAL_DELTA = (0.10, 0.20)


@dataclass(frozen=True)
class Shape:
    """Modality-invariant identity cues, in units of the person's height.

    Attributes:
        head_r: Head half-height.
        shoulder_w: Shoulder width.
        hip_w: Hip width.
        leg_frac: Leg length (hip to sole) as a fraction of the height.
        girth: Width multiplier of torso and limbs (slim < 1 < heavy).
        hair: ``HAIR_*`` code.
        hat: ``HAT_*`` code.
        sleeve: ``SLEEVE_*`` code of the top.
        top_len: How far the top reaches below the hips.
        coat: ``COAT_*`` code.
        coat_open: Whether the coat is worn open (the top shows in front).
        bottom: ``BOTTOM_*`` code.
        bottom_stripe: Whether trousers carry a side stripe.
        shoes: ``SHOES_*`` code.
        carry: ``CARRY_*`` code.
        carry_side: -1 or +1: the side, seen from the front, of a bag or case.
        carry_size: Size multiplier of the carried object.
        pattern: ``PATTERN_*`` code of the outermost upper garment.
        pattern_freq: Stripe / check count over the torso.
        pattern_duty: Fraction of a stripe period that is printed.
        pattern_phase: Phase of the stripes or position of a colour block, in [0, 1).
        logo_shape: ``LOGO_*`` code.
        logo_pos: Horizontal logo place (-1 left, 0 centre, +1 right), seen from the front.
        logo_size: Logo size multiplier.
    """

    head_r: float
    shoulder_w: float
    hip_w: float
    leg_frac: float
    girth: float
    hair: int
    hat: int
    sleeve: int
    top_len: float
    coat: int
    coat_open: bool
    bottom: int
    bottom_stripe: bool
    shoes: int
    carry: int
    carry_side: int
    carry_size: float
    pattern: int
    pattern_freq: int
    pattern_duty: float
    pattern_phase: float
    logo_shape: int
    logo_pos: int
    logo_size: float


@dataclass(frozen=True, eq=False)
class Appearance:
    """How an identity's parts look in each modality.

    Attributes:
        colours: Visible sRGB colour of each person part, shape ``(NUM_PARTS, 3)``.
        thermal: Infrared intensity of each person part, shape ``(NUM_PARTS,)``; independent of
            ``colours``.
    """

    colours: np.ndarray
    thermal: np.ndarray


@dataclass(frozen=True, eq=False)
class Identity:
    """One synthetic person.

    Attributes:
        pid: Identity number as written in paths and lists.
        shape: Modality-invariant cues.
        appearance: Colours and thermal intensities.
        twin_of: The identity this one is a colour or shape twin of (``None`` if none).
        twin_kind: ``"colour"`` or ``"shape"`` for twins, else ``""``.
        outfit: ``(colour outfit, thermal outfit)`` worn when the tree has an outfit pool
            (``SynVIConfig.outfit_pool``), else ``None``.
    """

    pid: int
    shape: Shape
    appearance: Appearance
    twin_of: int | None = None
    twin_kind: str = ""
    outfit: tuple[int, int] | None = None


@dataclass(frozen=True, eq=False)
class Scene:
    """A camera's background, as a label map plus each label's look in each modality.

    Attributes:
        labels: Background label map at render resolution plus crop margins, shape
            ``(Hs + 2 * margin_y, Ws + 2 * margin_x)``, values in ``[0, NUM_SCENE_LABELS)``.
        colours: Visible colour per background label, shape ``(NUM_SCENE_LABELS, 3)``.
        thermal: Infrared intensity per background label, shape ``(NUM_SCENE_LABELS,)``.
        margin_y: Vertical crop margin in render pixels.
        margin_x: Horizontal crop margin in render pixels.
    """

    labels: np.ndarray
    colours: np.ndarray
    thermal: np.ndarray
    margin_y: int
    margin_x: int


@dataclass(frozen=True, eq=False)
class Camera:
    """A camera: viewpoint, background scene and sensor response in each modality.

    Attributes:
        cam: Camera number as written in paths.
        modalities: Modalities this camera captures.
        indoor: Indoor (walls, floor) or outdoor (buildings, trees, cars) scene.
        scene_key: Key of its :class:`Scene` (two cameras watching one place share a scene).
        view_probs: Probability of front, back and side views, shape ``(3,)``.
        scale: Person height as a fraction of the image height.
        foot_y: Sole position as a fraction of the image height.
        x_offset: Horizontal person offset as a fraction of the image width.
        vis_gain: Per-channel illumination times white balance, shape ``(3,)``.
        vis_cast: Additive colour cast, shape ``(3,)``.
        vis_gamma: Tone curve exponent of the visible sensor.
        light_grad: Illumination gradient (horizontal, vertical) across the image.
        ir_gain: Infrared gain.
        ir_offset: Infrared offset.
        ir_gamma: Infrared tone curve exponent.
        ir_vignette: Infrared vignetting strength.
        ir_banding: Fixed-pattern column offsets of the infrared sensor, shape ``(W,)``.
        vis_noise: Visible noise standard deviation.
        ir_noise: Infrared noise standard deviation.
        blur: Typical blur radius in written pixels.
        occluder: ``OCCLUDER_*`` code of the foreground object this camera sees.
        occluder_colour: Visible colour of the occluder, shape ``(3,)``.
        occluder_thermal: Infrared intensity of the occluder.
    """

    cam: int
    modalities: tuple[Modality, ...]
    indoor: bool
    scene_key: int
    view_probs: np.ndarray
    scale: float
    foot_y: float
    x_offset: float
    vis_gain: np.ndarray
    vis_cast: np.ndarray
    vis_gamma: float
    light_grad: tuple[float, float]
    ir_gain: float
    ir_offset: float
    ir_gamma: float
    ir_vignette: float
    ir_banding: np.ndarray
    vis_noise: float
    ir_noise: float
    blur: float
    occluder: int
    occluder_colour: np.ndarray
    occluder_thermal: float


@dataclass(frozen=True, eq=False)
class World:
    """Everything needed to render any image of a tree.

    Attributes:
        layout: Layout name.
        seed: Tree seed, or a namespaced :data:`StreamRoot`.
        config: Resolved parameters.
        identities: Identity by pid.
        cameras: Camera by number.
        scenes: Scene by key.
        supersample: Render resolution divided by the written resolution (anti-aliasing).
    """

    layout: str
    seed: StreamRoot
    config: SynVIConfig
    identities: dict[int, Identity]
    cameras: dict[int, Camera]
    scenes: dict[int, Scene] = field(default_factory=dict)
    supersample: int = 2


# --------------------------------------------------------------------------- identities

#: Ranges of body proportions (units of the person's height).
HEAD_R = (0.052, 0.074)
SHOULDER_W = (0.19, 0.30)
HIP_W = (0.15, 0.25)
LEG_FRAC = (0.44, 0.53)
GIRTH = (0.82, 1.3)


def _pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """Draw an index with probability proportional to ``weights``."""
    p = np.asarray(weights, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


def sample_shape(rng: np.random.Generator, cue_rate: float) -> Shape:
    """Draw the modality-invariant cues of one identity.

    Args:
        rng: Population stream.
        cue_rate: Probability scale of the optional cues (``SynVIConfig.cue_rate``).

    Returns:
        A :class:`Shape`.
    """
    c = cue_rate
    bottom = _pick(rng, (0.34, 0.16, 0.16, 0.2, 0.14))
    coat = _pick(rng, (1.0 - 0.55 * c, 0.3 * c, 0.25 * c))
    return Shape(
        head_r=float(rng.uniform(*HEAD_R)),
        shoulder_w=float(rng.uniform(*SHOULDER_W)),
        hip_w=float(rng.uniform(*HIP_W)),
        leg_frac=float(rng.uniform(*LEG_FRAC)),
        girth=float(rng.uniform(*GIRTH)),
        hair=_pick(rng, (0.4, 0.3, 0.15, 0.15)),
        hat=_pick(rng, (1.0 - 0.5 * c, 0.2 * c, 0.15 * c, 0.15 * c)),
        sleeve=_pick(rng, (0.2, 0.4, 0.4)),
        top_len=float(rng.uniform(0.0, 0.08)),
        coat=coat,
        coat_open=bool(rng.random() < 0.5),
        bottom=bottom,
        bottom_stripe=bool(bottom in (BOTTOM_TROUSERS, BOTTOM_WIDE) and rng.random() < 0.4 * c),
        shoes=_pick(rng, (0.7, 0.3)),
        carry=_pick(rng, (1.0 - 0.9 * c, 0.3 * c, 0.25 * c, 0.2 * c, 0.15 * c)),
        carry_side=int(rng.choice((-1, 1))),
        carry_size=float(rng.uniform(0.8, 1.3)),
        pattern=_pick(rng, (1.0 - c, 0.22 * c, 0.16 * c, 0.14 * c, 0.2 * c, 0.16 * c, 0.12 * c)),
        pattern_freq=int(rng.integers(3, 7)),
        pattern_duty=float(rng.uniform(0.3, 0.55)),
        pattern_phase=float(rng.random()),
        logo_shape=int(rng.integers(0, 4)),
        logo_pos=int(rng.choice((-1, 0, 1))),
        logo_size=float(rng.uniform(0.6, 1.0)),
    )


def sample_appearance(
    rng: np.random.Generator, thermal_tie: float, thermal_spread: float = 1.0
) -> Appearance:
    """Draw the visible colours and, independently, the thermal intensities of one identity.

    Args:
        rng: Population stream.
        thermal_tie: Weight of the material in the thermal intensity
            (``SynVIConfig.thermal_material_tie``).
        thermal_spread: Contrast multiplier of the garment intensities about
            :data:`GARMENT_THERMAL_MEAN` (``SynVIConfig.thermal_spread``).

    Returns:
        An :class:`Appearance`.
    """
    colours = np.zeros((NUM_PARTS, 3))
    garment_idx = rng.choice(len(PALETTE), size=6, replace=True)
    jitter = rng.normal(0.0, 0.03, size=(NUM_PARTS, 3))
    row = {label: label - SKIN for label in PERSON_LABELS}
    colours[row[SKIN]] = SKIN_TONES[rng.integers(len(SKIN_TONES))]
    colours[row[HAIR]] = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    for label, k in zip((HAT, TOP, COAT, BOTTOM, BAG, SHOES), garment_idx, strict=True):
        colours[row[label]] = PALETTE[k]
    # Prints contrast with their garment: pick a pattern colour other than the garment's.
    for garment, pattern in ((TOP, TOP_PATTERN), (COAT, COAT_PATTERN), (BOTTOM, BOTTOM_PATTERN)):
        options = [
            k for k in range(len(PALETTE)) if not np.allclose(PALETTE[k], colours[row[garment]])
        ]
        colours[row[pattern]] = PALETTE[options[rng.integers(len(options))]]
    colours[row[STRAP]] = colours[row[BAG]] * 0.8
    colours = np.clip(colours + jitter, 0.0, 1.0)

    thermal = np.zeros(NUM_PARTS)
    thermal[row[SKIN]] = rng.uniform(*SKIN_THERMAL)
    thermal[row[HAIR]] = rng.uniform(*HAIR_THERMAL)
    for label, materials in PART_MATERIALS.items():
        material = materials[rng.integers(len(materials))]
        own = rng.uniform(0.15, 0.8)
        base = MATERIAL_THERMAL[material] + rng.normal(0.0, 0.03)
        value = thermal_tie * base + (1.0 - thermal_tie) * own
        stretched = GARMENT_THERMAL_MEAN + thermal_spread * (value - GARMENT_THERMAL_MEAN)
        thermal[row[label]] = np.clip(stretched, *GARMENT_THERMAL_RANGE)
    for garment, pattern in ((TOP, TOP_PATTERN), (COAT, COAT_PATTERN), (BOTTOM, BOTTOM_PATTERN)):
        delta = rng.uniform(*PATTERN_THERMAL_DELTA) * rng.choice((-1.0, 1.0))
        value = thermal[row[garment]] + delta
        # Keep the print visible: reflect it to the other side if it would clip.
        if not 0.05 <= value <= 0.95:
            value = thermal[row[garment]] - delta
        thermal[row[pattern]] = value
    return Appearance(colours=colours, thermal=np.clip(thermal, 0.0, 1.0))


def build_identities(seed: StreamRoot, pids: list[int], cfg: SynVIConfig) -> dict[int, Identity]:
    """Draw every identity, then pair some into colour twins and shape twins.

    Colour twins share all visible colours but not shape; shape twins share all shape cues but
    not colours or thermal values, so that neither cue alone identifies a person (see
    docs/synthetic.md).

    Args:
        seed: Tree seed, or a namespaced :data:`StreamRoot`.
        pids: Identity numbers.
        cfg: Resolved parameters.

    Returns:
        Identity by pid.
    """
    rng = rng_for(seed, TAG_POPULATION)
    people = {
        pid: Identity(
            pid=pid,
            shape=sample_shape(rng, cfg.cue_rate),
            appearance=sample_appearance(rng, cfg.thermal_material_tie, cfg.thermal_spread),
        )
        for pid in pids
    }
    if cfg.outfit_pool > 0:
        people = _dress_from_pool(seed, people, cfg)
    n_pairs = int(round(cfg.twin_fraction * len(pids) / 2))
    order = [int(p) for p in rng.permutation(pids)]
    for k in range(min(n_pairs, len(order) // 2)):
        a, b = people[order[2 * k]], people[order[2 * k + 1]]
        if k % 2 == 0:
            twin_app = Appearance(
                colours=a.appearance.colours.copy(), thermal=b.appearance.thermal
            )
            people[b.pid] = replace(b, appearance=twin_app, twin_of=a.pid, twin_kind="colour")
        else:
            people[b.pid] = replace(b, shape=a.shape, twin_of=a.pid, twin_kind="shape")
    return people


#: Rows of an identity's colour and thermal tables that an outfit sets (everything but the body).
OUTFIT_ROWS = np.array([label - SKIN for label in PERSON_LABELS if label not in (SKIN, HAIR)])
#: Per-identity jitter of an outfit's colours and thermal values: the same jacket, not the same
#: pixel values.
OUTFIT_JITTER = 0.03
#: Sub-key of the population stream that draws the wardrobe and who wears what, so that the
#: identities' own draws do not shift when the pool size changes.
OUTFIT_STREAM = 1


def _dress_from_pool(
    seed: StreamRoot, people: dict[int, Identity], cfg: SynVIConfig
) -> dict[int, Identity]:
    """Replace every identity's garment colours and thermal values by shared outfits.

    ``cfg.outfit_pool`` colour outfits and, independently, ``cfg.thermal_outfit_pool`` (by
    default as many) thermal outfits are drawn once per tree; each identity wears one of each.
    Skin and hair stay the identity's own.

    Args:
        seed: Tree seed, or a namespaced :data:`StreamRoot`.
        people: Identities with their own appearances.
        cfg: Resolved parameters.

    Returns:
        Identity by pid, with pooled garment colours and thermal values.
    """
    rng = rng_for(seed, TAG_POPULATION, OUTFIT_STREAM)
    n = cfg.outfit_pool
    n_thermal = n if cfg.thermal_outfit_pool is None else cfg.thermal_outfit_pool
    colour_pool = [
        sample_appearance(rng, cfg.thermal_material_tie, cfg.thermal_spread).colours
        for _ in range(n)
    ]
    thermal_pool = [
        sample_appearance(rng, cfg.thermal_material_tie, cfg.thermal_spread).thermal
        for _ in range(n_thermal)
    ]
    dressed = {}
    for pid, person in people.items():
        colours = person.appearance.colours.copy()
        thermal = person.appearance.thermal.copy()
        colour_k, thermal_k = int(rng.integers(n)), int(rng.integers(n_thermal))
        colours[OUTFIT_ROWS] = colour_pool[colour_k][OUTFIT_ROWS] + rng.normal(
            0.0, OUTFIT_JITTER, size=(len(OUTFIT_ROWS), 3)
        )
        thermal[OUTFIT_ROWS] = thermal_pool[thermal_k][OUTFIT_ROWS] + rng.normal(
            0.0, OUTFIT_JITTER, size=len(OUTFIT_ROWS)
        )
        appearance = Appearance(
            colours=np.clip(colours, 0.0, 1.0), thermal=np.clip(thermal, 0.0, 1.0)
        )
        dressed[pid] = replace(person, appearance=appearance, outfit=(colour_k, thermal_k))
    return dressed


# --------------------------------------------------------------------------- cameras and scenes

#: Scene base colours: indoor walls/floors, outdoor facades/pavements (visible).
INDOOR_BASES = np.array([(0.78, 0.76, 0.70), (0.62, 0.64, 0.66), (0.70, 0.62, 0.52)])
OUTDOOR_BASES = np.array([(0.60, 0.62, 0.64), (0.52, 0.48, 0.42), (0.66, 0.70, 0.74)])
#: Fraction of the render size kept as crop margin around a scene (per-image crop jitter).
SCENE_MARGIN = (0.08, 0.15)


def _scene_colour(rng: np.random.Generator, base: np.ndarray, contrast: float) -> np.ndarray:
    """A clutter object's colour: the base pulled towards a random colour by ``contrast``."""
    target = rng.uniform(0.05, 0.95, size=3)
    return np.clip((1.0 - contrast) * base + contrast * target, 0.0, 1.0)


def build_scene(
    seed: StreamRoot, layout_code: int, key: int, indoor: bool, cfg: SynVIConfig, supersample: int
) -> Scene:
    """Draw a camera's background: base regions plus ``cfg.clutter`` objects.

    Args:
        seed: Tree seed, or a namespaced :data:`StreamRoot`.
        layout_code: ``LAYOUT_CODE`` of the layout.
        key: Scene key.
        indoor: Indoor or outdoor scene furniture.
        cfg: Resolved parameters.
        supersample: Render resolution factor.

    Returns:
        A :class:`Scene`.
    """
    rng = rng_for(seed, TAG_SCENE, layout_code, key)
    hs, ws = cfg.height * supersample, cfg.width * supersample
    my, mx = int(round(SCENE_MARGIN[0] * hs)), int(round(SCENE_MARGIN[1] * ws))
    h, w = hs + 2 * my, ws + 2 * mx
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.8))
    draw.rectangle((0, horizon, w, h), fill=1)
    colours = np.zeros((NUM_SCENE_LABELS, 3))
    thermal = np.zeros(NUM_SCENE_LABELS)
    bases = INDOOR_BASES if indoor else OUTDOOR_BASES
    colours[0] = bases[rng.integers(len(bases))] * rng.uniform(0.8, 1.05)
    colours[1] = colours[0] * rng.uniform(0.55, 0.85)
    thermal[0] = rng.uniform(0.3, 0.45) if indoor else rng.uniform(0.15, 0.35)
    thermal[1] = thermal[0] + rng.uniform(-0.1, 0.1)
    contrast = cfg.clutter_contrast
    n_objects = cfg.clutter
    for k in range(n_objects):
        label = 2 + k % (NUM_SCENE_LABELS - 2)
        colours[label] = _scene_colour(rng, colours[0], contrast)
        warm = rng.random() < 0.15 * contrast  # lamps, radiators, engines
        thermal[label] = (
            rng.uniform(0.6, 0.85)
            if warm
            else np.clip(thermal[0] + contrast * rng.uniform(-0.25, 0.25), 0.0, 1.0)
        )
        kind = int(rng.integers(0, 5))
        x0 = int(rng.uniform(-0.1, 0.95) * w)
        if kind == 0:  # door / tree trunk / pillar: tall, standing on the ground
            bw = int(rng.uniform(0.08, 0.3) * w)
            top = int(rng.uniform(0.0, 0.4) * h)
            draw.rectangle((x0, top, x0 + bw, horizon + int(0.03 * h)), fill=label)
        elif kind == 1:  # window / poster / shop sign
            bw, bh = int(rng.uniform(0.1, 0.35) * w), int(rng.uniform(0.06, 0.2) * h)
            top = int(rng.uniform(0.02, 0.5) * h)
            draw.rectangle((x0, top, x0 + bw, top + bh), fill=label)
        elif kind == 2:  # pole / lamp post: thin, full height
            bw = max(2, int(rng.uniform(0.02, 0.06) * w))
            draw.rectangle((x0, 0, x0 + bw, horizon + int(0.05 * h)), fill=label)
        elif kind == 3:  # bush / tree crown / plant: blob
            rx, ry = rng.uniform(0.1, 0.3) * w, rng.uniform(0.05, 0.15) * h
            cy = rng.uniform(0.1, 0.75) * h
            draw.ellipse((x0 - rx, cy - ry, x0 + rx, cy + ry), fill=label)
        else:  # railing / floor marking / kerb: horizontal band
            y0 = int(rng.uniform(0.3, 0.98) * h)
            bh = max(2, int(rng.uniform(0.01, 0.04) * h))
            draw.rectangle((0, y0, w, y0 + bh), fill=label)
    return Scene(
        labels=np.asarray(img, dtype=np.uint8).copy(),
        colours=colours,
        thermal=np.clip(thermal, 0.0, 1.0),
        margin_y=my,
        margin_x=mx,
    )


def build_camera(
    seed: StreamRoot,
    layout_code: int,
    cam: int,
    modalities: tuple[Modality, ...],
    indoor: bool,
    scene_key: int,
    cfg: SynVIConfig,
) -> Camera:
    """Draw a camera's viewpoint and sensor response (docs/synthetic.md, "Cameras differ").

    Args:
        seed: Tree seed, or a namespaced :data:`StreamRoot`.
        layout_code: ``LAYOUT_CODE`` of the layout.
        cam: Camera number.
        modalities: Modalities it captures.
        indoor: Indoor or outdoor.
        scene_key: Key of its scene.
        cfg: Resolved parameters.

    Returns:
        A :class:`Camera`.
    """
    rng = rng_for(seed, TAG_CAMERA, layout_code, cam)
    b = cfg.camera_bias
    dominant = int(rng.integers(0, 3))
    view_probs = np.full(3, cfg.view_mix / 2.0)
    view_probs[dominant] = 1.0 - cfg.view_mix
    level = 1.0 + b * rng.uniform(-0.3, 0.15)
    white_balance = 1.0 + b * rng.uniform(-0.18, 0.18, size=3)
    return Camera(
        cam=cam,
        modalities=modalities,
        indoor=indoor,
        scene_key=scene_key,
        view_probs=view_probs,
        scale=float(rng.uniform(0.84, 0.92) + b * rng.uniform(-0.05, 0.03)),
        foot_y=float(rng.uniform(0.955, 0.985)),
        x_offset=float(b * rng.uniform(-0.06, 0.06)),
        vis_gain=level * white_balance,
        vis_cast=b * rng.uniform(-0.05, 0.05, size=3),
        vis_gamma=float(1.0 + b * rng.uniform(-0.25, 0.25)),
        light_grad=(float(b * rng.uniform(-0.25, 0.25)), float(b * rng.uniform(-0.2, 0.2))),
        ir_gain=float(1.0 + b * rng.uniform(-0.3, 0.25)),
        ir_offset=float(b * rng.uniform(-0.08, 0.08)),
        ir_gamma=float(1.0 + b * rng.uniform(-0.35, 0.35)),
        ir_vignette=float(b * rng.uniform(0.0, 0.35)),
        ir_banding=rng.normal(0.0, 0.5 * cfg.ir_noise, size=cfg.width),
        vis_noise=float(cfg.vis_noise * rng.uniform(0.6, 1.4)),
        ir_noise=float(cfg.ir_noise * rng.uniform(0.6, 1.4)),
        blur=float(cfg.blur * rng.uniform(0.4, 1.0)),
        occluder=int(rng.integers(0, 3)),
        occluder_colour=rng.uniform(0.1, 0.8, size=3),
        occluder_thermal=float(rng.uniform(0.15, 0.7)),
    )
