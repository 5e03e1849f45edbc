"""Rendering one SynVI image: a label map of scene and person, coloured per modality.

An image is drawn once as a *label map* (background labels from the camera's scene, person
parts from the identity's :class:`~gur_lightning.synvi.world.Shape`) at twice the written
resolution, then coloured by a look-up table: visible colours from the identity's palette under
the camera's illumination and white balance, or infrared intensities from its thermal values
under the camera's gain and tone curve. The geometry, and therefore every silhouette and pattern
cue, is thus identical in both modalities, while colour never crosses the modality gap
(docs/synthetic.md, "Why it must be hard in the right way").
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from gur_lightning.data.samples import Modality
from gur_lightning.synvi.world import (
    BAG,
    BOTTOM,
    BOTTOM_LONG_SKIRT,
    BOTTOM_PATTERN,
    BOTTOM_SHORTS,
    BOTTOM_SKIRT,
    BOTTOM_TROUSERS,
    BOTTOM_WIDE,
    CARRY_BACKPACK,
    CARRY_HANDBAG,
    CARRY_SHOULDER_BAG,
    CARRY_SUITCASE,
    COAT,
    COAT_JACKET,
    COAT_NONE,
    COAT_PATTERN,
    HAIR,
    HAIR_BUN,
    HAIR_CROPPED,
    HAIR_LONG,
    HAT,
    HAT_BEANIE,
    HAT_BRIM,
    HAT_CAP,
    LAYOUT_CODE,
    LOGO_CIRCLE,
    LOGO_DIAMOND,
    LOGO_SQUARE,
    MODALITY_CODE,
    NUM_LABELS,
    NUM_SCENE_LABELS,
    OCCLUDER,
    OCCLUDER_BOTTOM,
    OCCLUDER_POLE,
    PATTERN_BLOCK,
    PATTERN_CHECKS,
    PATTERN_HSTRIPES,
    PATTERN_LOGO,
    PATTERN_NONE,
    PATTERN_SASH,
    PATTERN_VSTRIPES,
    SHOES,
    SHOES_BOOTS,
    SKIN,
    SLEEVE_LONG,
    SLEEVE_SHORT,
    STRAP,
    TAG_IMAGE,
    TAG_LIGHT,
    TOP,
    TOP_PATTERN,
    VIEW_BACK,
    VIEW_FRONT,
    VIEW_SIDE,
    Camera,
    Shape,
    World,
    rng_for,
)

#: Vertical body landmarks (units of the person's height, 0 = top of head, 1 = sole).
ANKLE_V = 0.955
SHOULDER_DROP = 0.028
#: Shoulder-to-wrist arm length and nominal limb widths (units of height, before girth).
ARM_LEN = 0.345
ARM_W = 0.042
ANKLE_W = 0.045
#: Side-view torso half-depth (units of height, before girth).
SIDE_DEPTH = 0.045
#: Strength of the cylinder-like shading of the body (darker towards its silhouette edges).
BODY_SHADING = 0.22
#: Shading keeps its role in infrared (limb edges radiate at grazing angles), but weaker.
IR_BODY_SHADING = 0.1


class _Pose:
    """Per-image pose: arm angles, stride, small lean (docs/synthetic.md, per-image variation)."""

    def __init__(self, rng: np.random.Generator, jitter: float) -> None:
        self.arm = np.clip(0.07 + 0.05 * jitter * rng.standard_normal(2), -0.04, 0.35)
        self.swing = float(0.3 * jitter * rng.uniform(-1.0, 1.0))
        self.spread = float(np.clip(0.012 + 0.012 * jitter * rng.standard_normal(), -0.004, 0.05))
        self.stride = float(np.clip(rng.uniform(0.0, 0.28) * jitter, 0.0, 0.4))
        self.lean = float(0.01 * jitter * rng.standard_normal())


class _Painter:
    """Draws body-unit geometry onto a label map.

    ``u`` is horizontal (units of the person's height; in side views positive ``u`` is the
    facing direction), ``v`` vertical from the top of the head (0) to the sole (1).
    """

    def __init__(self, image: Image.Image, cx: float, top: float, h: float, mirror: int) -> None:
        self.draw = ImageDraw.Draw(image)
        self.cx, self.top, self.h, self.mirror = cx, top, h, mirror

    def pt(self, u: float, v: float) -> tuple[float, float]:
        """Pixel position of body point ``(u, v)``."""
        return (self.cx + self.mirror * u * self.h, self.top + v * self.h)

    def poly(self, points: list[tuple[float, float]], label: int) -> None:
        """Fill a polygon given in body units."""
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=label)

    def ellipse(self, u: float, v: float, ru: float, rv: float, label: int) -> None:
        """Fill an ellipse centred at ``(u, v)`` with radii ``(ru, rv)``."""
        x, y = self.pt(u, v)
        rx, ry = abs(ru) * self.h, abs(rv) * self.h
        self.draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=label)

    def rect(self, u0: float, v0: float, u1: float, v1: float, label: int) -> None:
        """Fill an axis-aligned rectangle with corners ``(u0, v0)`` and ``(u1, v1)``."""
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], label)

    def limb(
        self, p0: tuple[float, float], p1: tuple[float, float], w0: float, w1: float, label: int
    ) -> None:
        """Fill a tapered limb from ``p0`` (width ``w0``) to ``p1`` (width ``w1``), rounded."""
        du, dv = p1[0] - p0[0], p1[1] - p0[1]
        n = math.hypot(du, dv) or 1.0
        nu, nv = -dv / n, du / n
        a, b = w0 / 2.0, w1 / 2.0
        self.poly(
            [
                (p0[0] + nu * a, p0[1] + nv * a),
                (p1[0] + nu * b, p1[1] + nv * b),
                (p1[0] - nu * b, p1[1] - nv * b),
                (p0[0] - nu * a, p0[1] - nv * a),
            ],
            label,
        )
        self.ellipse(p0[0], p0[1], a, a, label)
        self.ellipse(p1[0], p1[1], b, b, label)

    def pie(self, u: float, v: float, ru: float, rv: float, label: int) -> None:
        """Fill the upper half of an ellipse (a hat crown)."""
        x, y = self.pt(u, v)
        rx, ry = abs(ru) * self.h, abs(rv) * self.h
        self.draw.pieslice((x - rx, y - ry, x + rx, y + ry), 180, 360, fill=label)


def _lerp(p0: tuple[float, float], p1: tuple[float, float], t: float) -> tuple[float, float]:
    """Point a fraction ``t`` of the way from ``p0`` to ``p1``."""
    return (p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]))


class Body:
    """Body landmarks of one identity (units of height), shared by every view.

    Vertical coordinates run from 0 (top of the head) to 1 (soles); horizontal ones are
    offsets from the body's axis.

    Args:
        s: The identity's shape.

    Attributes:
        s: The shape the landmarks derive from.
        sy: Shoulder height; ``hy``: hip height (top of the legs); ``knee``: knee height.
        hr: Head radius; ``sh``, ``hh``: half widths of shoulders and hips.
        aw: Arm width; ``td``: torso depth seen from the side; ``leg_top_w``, ``ankle_w``:
            leg widths at the hip and the ankle.
    """

    def __init__(self, s: Shape) -> None:
        self.s = s
        self.hr = s.head_r
        self.sy = 2.0 * s.head_r + SHOULDER_DROP
        self.hy = 1.0 - s.leg_frac
        self.knee = self.hy + 0.5 * s.leg_frac
        self.sh = s.shoulder_w / 2.0 * (0.85 + 0.15 * s.girth)
        self.hh = s.hip_w / 2.0 * (0.8 + 0.2 * s.girth)
        self.aw = ARM_W * s.girth
        self.td = SIDE_DEPTH * s.girth + 0.015
        self.leg_top_w = self.hh * 0.95
        self.ankle_w = ANKLE_W * (0.8 + 0.2 * s.girth)


def _draw_legs_front(p: _Painter, b: Body, pose: _Pose) -> None:
    """Legs, lower garment and shoes seen from the front or back."""
    hy = b.hy
    hips = [(-b.hh * 0.5, hy), (b.hh * 0.5, hy)]
    feet = [(-b.hh * 0.5 - pose.spread, ANKLE_V), (b.hh * 0.5 + pose.spread, ANKLE_V)]
    _draw_lower(p, b, hips, feet, front=True)


def _draw_lower(
    p: _Painter,
    b: Body,
    hips: list[tuple[float, float]],
    feet: list[tuple[float, float]],
    front: bool,
) -> None:
    """Legs with trousers / shorts / skirt, the side stripe and shoes."""
    s, hy = b.s, b.hy
    trousers = s.bottom in (BOTTOM_TROUSERS, BOTTOM_WIDE)
    wide = 1.35 if s.bottom == BOTTOM_WIDE else 1.05
    half = b.hh if front else b.td
    for hip, foot in zip(hips, feet, strict=True):
        if trousers:
            p.limb(hip, foot, b.leg_top_w * 1.05, b.ankle_w * wide, BOTTOM)
        else:
            p.limb(hip, foot, b.leg_top_w * 0.8, b.ankle_w * 0.85, SKIN)
    if s.bottom in (BOTTOM_TROUSERS, BOTTOM_WIDE, BOTTOM_SHORTS):
        p.rect(-half, hy - 0.03, half, hy + 0.05, BOTTOM)
    if s.bottom == BOTTOM_SHORTS:
        for hip, foot in zip(hips, feet, strict=True):
            p.limb(hip, _lerp(hip, foot, 0.34), b.leg_top_w * 1.1, b.leg_top_w * 1.0, BOTTOM)
    elif s.bottom in (BOTTOM_SKIRT, BOTTOM_LONG_SKIRT):
        long = s.bottom == BOTTOM_LONG_SKIRT
        hem = ANKLE_V - 0.03 if long else b.knee + 0.03
        flare = (1.75 if long else 1.5) * half
        p.poly([(-half, hy - 0.03), (half, hy - 0.03), (flare, hem), (-flare, hem)], BOTTOM)
    if trousers and s.bottom_stripe:
        for hip, foot in zip(hips, feet, strict=True):
            out = 1.0 if (foot[0] >= 0 or not front) else -1.0
            off_top = out * (b.leg_top_w * 0.5 - 0.008) if front else 0.0
            off_bot = out * (b.ankle_w * wide * 0.5 - 0.006) if front else 0.0
            p.limb(
                (hip[0] + off_top, hip[1]),
                (foot[0] + off_bot, foot[1]),
                0.013,
                0.011,
                BOTTOM_PATTERN,
            )
    for foot in feet:
        if s.shoes == SHOES_BOOTS:
            p.rect(foot[0] - 0.033, ANKLE_V - 0.055, foot[0] + 0.033, 0.99, SHOES)
        toe = 0.0 if front else 0.018
        p.ellipse(foot[0] + toe, 0.975, 0.04 if front else 0.055, 0.022, SHOES)


def _torso_points(
    b: Body, bottom_v: float, hem_half: float, front: bool
) -> list[tuple[float, float]]:
    """Outline of the upper body down to ``bottom_v`` with a hem half-width ``hem_half``."""
    mid = (b.sy + b.hy) / 2.0
    if front:
        waist = max(b.hh * 0.95, b.sh * 0.78)
        return [
            (-b.sh, b.sy),
            (b.sh, b.sy),
            (waist, mid),
            (hem_half, bottom_v),
            (-hem_half, bottom_v),
            (-waist, mid),
        ]
    return [
        (-b.td, b.sy),
        (b.td * 0.9, b.sy),
        (b.td * 1.05, mid),
        (hem_half, bottom_v),
        (-hem_half, bottom_v),
        (-b.td * 1.05, mid),
    ]


def _draw_upper(p: _Painter, b: Body, view: int) -> None:
    """Top and coat (the coat worn open shows the top in front)."""
    s = b.s
    front = view != VIEW_SIDE
    half = b.hh * 1.02 if front else b.td * 0.95
    p.poly(_torso_points(b, b.hy + s.top_len, half, front), TOP)
    if front:
        for side in (-1, 1):
            p.ellipse(side * (b.sh - b.aw * 0.5), b.sy + b.aw * 0.5, b.aw * 0.6, b.aw * 0.55, TOP)
    if s.coat == COAT_NONE:
        return
    if s.coat == COAT_JACKET:
        hem, hem_half = b.hy + 0.07, (max(b.hh * 1.1, b.sh * 0.9) if front else b.td * 1.15)
    else:
        hem, hem_half = b.knee + 0.06, (b.hh * 1.45 if front else b.td * 1.6)
    outline = _torso_points(b, hem, hem_half, front)
    if view == VIEW_FRONT and s.coat_open:
        gap = 0.022
        left = [outline[0], (-gap, b.sy + 0.02), (-gap, hem), outline[4], outline[5]]
        p.poly(left, COAT)
        p.poly([(-u, v) for u, v in left], COAT)
    else:
        p.poly(outline, COAT)
    if front:
        for side in (-1, 1):
            p.ellipse(side * (b.sh - b.aw * 0.5), b.sy + b.aw * 0.5, b.aw * 0.7, b.aw * 0.6, COAT)


def _draw_arm(
    p: _Painter, b: Body, joint: tuple[float, float], wrist: tuple[float, float]
) -> None:
    """One arm: skin, hand and sleeve (the coat's sleeve when a coat is worn)."""
    s = b.s
    p.limb(joint, wrist, b.aw, b.aw * 0.78, SKIN)
    p.ellipse(wrist[0], wrist[1] + 0.012, b.aw * 0.5, b.aw * 0.62, SKIN)
    if s.coat != COAT_NONE:
        p.limb(joint, _lerp(joint, wrist, 0.93), b.aw * 1.3, b.aw * 1.15, COAT)
    elif s.sleeve == SLEEVE_SHORT:
        p.limb(joint, _lerp(joint, wrist, 0.38), b.aw * 1.2, b.aw * 1.1, TOP)
    elif s.sleeve == SLEEVE_LONG:
        p.limb(joint, _lerp(joint, wrist, 0.92), b.aw * 1.18, b.aw * 0.98, TOP)


def _draw_head(p: _Painter, b: Body, view: int) -> None:
    """Neck, head, hair and hat."""
    s, hr = b.s, b.hr
    p.rect(-0.3 * hr, 1.6 * hr, 0.3 * hr, b.sy + 0.01, SKIN)
    hair_cap = {HAIR_CROPPED: 0.35, HAIR_BUN: 0.55}.get(s.hair, 0.5)
    if view == VIEW_BACK:
        if s.hair == HAIR_CROPPED:
            p.ellipse(0.0, hr, 0.78 * hr, hr, SKIN)
            p.ellipse(0.0, hr * 0.85, 0.8 * hr, 0.8 * hr, HAIR)
        else:
            p.ellipse(0.0, hr, 0.82 * hr, 1.02 * hr, HAIR)
    elif view == VIEW_FRONT:
        p.ellipse(0.0, hr * 0.95, 0.84 * hr, 0.97 * hr, HAIR)
        p.ellipse(0.0, hr * (1.05 + hair_cap * 0.25), 0.72 * hr, (1.0 - hair_cap * 0.2) * hr, SKIN)
    else:
        p.ellipse(-0.1 * hr, hr, 0.85 * hr, hr, HAIR)
        p.ellipse(0.14 * hr, hr * 1.1, 0.7 * hr, 0.9 * hr, SKIN)
    if s.hair == HAIR_BUN:
        bun_u = -0.85 * hr if view == VIEW_SIDE else 0.0
        p.ellipse(bun_u, 0.05 * hr if view != VIEW_SIDE else 0.7 * hr, 0.38 * hr, 0.36 * hr, HAIR)
    if s.hat == HAT_CAP:
        p.pie(0.0, hr * 0.78, 0.88 * hr, 0.8 * hr, HAT)
        if view == VIEW_SIDE:
            p.poly(
                [
                    (0.3 * hr, 0.62 * hr),
                    (1.35 * hr, 0.72 * hr),
                    (1.3 * hr, 0.82 * hr),
                    (0.3 * hr, 0.8 * hr),
                ],
                HAT,
            )
        else:
            p.rect(-0.9 * hr, 0.7 * hr, 0.9 * hr, 0.86 * hr, HAT)
    elif s.hat == HAT_BEANIE:
        p.pie(0.0, hr * 0.9, 0.9 * hr, 1.05 * hr, HAT)
        p.rect(-0.9 * hr, 0.75 * hr, 0.9 * hr, 0.95 * hr, HAT)
    elif s.hat == HAT_BRIM:
        p.ellipse(0.0, 0.62 * hr, 1.65 * hr, 0.22 * hr, HAT)
        p.rect(-0.75 * hr, -0.15 * hr, 0.75 * hr, 0.62 * hr, HAT)


def _draw_long_hair(p: _Painter, b: Body, view: int) -> None:
    """Long hair: behind the shoulders from the front, over the upper back from behind."""
    hr = b.hr
    if view == VIEW_SIDE:
        p.poly(
            [
                (-0.85 * hr, hr),
                (-0.05 * hr, hr),
                (-0.2 * hr, b.sy + 0.09),
                (-0.95 * hr, b.sy + 0.08),
            ],
            HAIR,
        )
    else:
        width = 1.05 * hr if view == VIEW_FRONT else 0.95 * hr
        p.poly(
            [(-0.85 * hr, hr), (0.85 * hr, hr), (width, b.sy + 0.09), (-width, b.sy + 0.09)], HAIR
        )


def _draw_front_back(p: _Painter, b: Body, view: int, pose: _Pose) -> None:
    """A person seen from the front or the back (back view: mirrored carry side)."""
    s = b.s
    side = s.carry_side if view == VIEW_FRONT else -s.carry_side
    if s.hair == HAIR_LONG and view == VIEW_FRONT:
        _draw_long_hair(p, b, view)
    _draw_legs_front(p, b, pose)
    _draw_upper(p, b, view)
    if view == VIEW_BACK and s.hair == HAIR_LONG:
        _draw_long_hair(p, b, view)
    if s.carry == CARRY_BACKPACK and view == VIEW_BACK:
        w = 0.75 * b.sh * s.carry_size
        v1 = b.sy + 0.5 * (b.hy - b.sy) * s.carry_size + 0.04
        p.rect(-w, b.sy + 0.02, w, v1, BAG)
        p.rect(-0.7 * w, v1 - 0.35 * (v1 - b.sy), 0.7 * w, v1 - 0.3 * (v1 - b.sy), STRAP)
    wrists: dict[int, tuple[float, float]] = {}
    for k, arm_side in enumerate((-1, 1)):
        holding = arm_side == side and s.carry in (CARRY_HANDBAG, CARRY_SUITCASE)
        angle = 0.03 if holding else float(pose.arm[k])
        joint = (arm_side * (b.sh - b.aw * 0.5), b.sy + b.aw * 0.5)
        wrist = (
            joint[0] + arm_side * ARM_LEN * math.sin(angle),
            joint[1] + ARM_LEN * math.cos(angle),
        )
        wrists[arm_side] = wrist
        _draw_arm(p, b, joint, wrist)
    if s.carry == CARRY_BACKPACK and view == VIEW_FRONT:
        for arm_side in (-1, 1):
            p.limb(
                (arm_side * 0.6 * b.sh, b.sy),
                (arm_side * 0.55 * b.sh, b.sy + 0.55 * (b.hy - b.sy)),
                0.022,
                0.02,
                STRAP,
            )
    elif s.carry == CARRY_SHOULDER_BAG:
        bag_u = side * (b.hh + 0.035)
        p.limb((-side * 0.65 * b.sh, b.sy), (bag_u, b.hy - 0.03), 0.016, 0.016, STRAP)
        size = s.carry_size
        p.rect(
            bag_u - 0.05 * size, b.hy - 0.06, bag_u + 0.05 * size, b.hy - 0.06 + 0.1 * size, BAG
        )
    elif s.carry == CARRY_HANDBAG:
        wu, wv = wrists[side]
        size = s.carry_size
        p.limb((wu, wv - 0.01), (wu, wv + 0.03), 0.01, 0.01, STRAP)
        p.poly(
            [
                (wu - 0.03 * size, wv + 0.02),
                (wu + 0.03 * size, wv + 0.02),
                (wu + 0.045 * size, wv + 0.02 + 0.08 * size),
                (wu - 0.045 * size, wv + 0.02 + 0.08 * size),
            ],
            BAG,
        )
    elif s.carry == CARRY_SUITCASE:
        wu, wv = wrists[side]
        u0 = side * (b.hh + 0.06)
        u1 = u0 + side * 0.14 * s.carry_size
        p.rect(min(u0, u1), 0.7, max(u0, u1), 0.985, BAG)
        p.limb((wu, wv), ((u0 + u1) / 2.0, 0.7), 0.012, 0.012, STRAP)
    _draw_head(p, b, view)


def _draw_side(p: _Painter, b: Body, pose: _Pose) -> None:
    """A person seen from the side, facing ``+u`` (the painter mirrors for the other way)."""
    s = b.s
    joint = (0.0, b.sy + 0.02)

    def wrist_at(theta: float) -> tuple[float, float]:
        return (joint[0] + ARM_LEN * math.sin(theta), joint[1] + ARM_LEN * math.cos(theta))

    near_theta = -0.25 if s.carry == CARRY_SUITCASE else pose.swing
    _draw_arm(p, b, joint, wrist_at(-pose.swing * 0.8))  # far arm, behind the body
    d = math.sin(pose.stride) * (ANKLE_V - b.hy)
    _draw_lower(p, b, [(0.0, b.hy), (0.0, b.hy)], [(d, ANKLE_V), (-d, ANKLE_V)], front=False)
    if s.carry == CARRY_BACKPACK:
        size = s.carry_size
        p.rect(-b.td - 0.09 * size, b.sy + 0.02, -b.td + 0.01, b.sy + 0.3 * size + 0.04, BAG)
    if s.hair == HAIR_LONG:
        _draw_long_hair(p, b, VIEW_SIDE)
    _draw_upper(p, b, VIEW_SIDE)
    if s.carry == CARRY_BACKPACK:
        p.limb((-b.td, b.sy + 0.01), (b.td * 0.5, b.sy + 0.12), 0.02, 0.02, STRAP)
    elif s.carry == CARRY_SHOULDER_BAG:
        size = s.carry_size
        p.limb((b.td * 0.2, b.sy), (-0.01, b.hy - 0.03), 0.016, 0.016, STRAP)
        p.rect(-0.06 * size, b.hy - 0.06, 0.05 * size, b.hy - 0.06 + 0.1 * size, BAG)
    elif s.carry == CARRY_SUITCASE:
        wu, wv = wrist_at(near_theta)
        size = s.carry_size
        p.rect(wu - 0.15 * size, 0.7, wu - 0.01, 0.985, BAG)
        p.limb((wu, wv), (wu - 0.08 * size, 0.7), 0.012, 0.012, STRAP)
    near = wrist_at(near_theta)
    _draw_arm(p, b, joint, near)
    if s.carry == CARRY_HANDBAG:
        wu, wv = near
        size = s.carry_size
        p.poly(
            [
                (wu - 0.035 * size, wv + 0.02),
                (wu + 0.035 * size, wv + 0.02),
                (wu + 0.045 * size, wv + 0.1 * size),
                (wu - 0.045 * size, wv + 0.1 * size),
            ],
            BAG,
        )
    _draw_head(p, b, VIEW_SIDE)


def pattern_mask(b: Body, view: int, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Which upper-garment pixels at body coordinates ``(u, v)`` are printed.

    Args:
        b: Body landmarks.
        view: ``VIEW_*`` code.
        u: Horizontal body coordinates of the garment pixels, shape ``(n,)``.
        v: Vertical body coordinates, shape ``(n,)``.

    Returns:
        Boolean mask, shape ``(n,)``, or ``None`` when nothing is printed in this view.
    """
    s = b.s
    span = b.hy - b.sy
    if s.pattern == PATTERN_NONE:
        return None
    width = 2.0 * (b.sh if view != VIEW_SIDE else b.td)

    def hstripes() -> np.ndarray:
        return np.mod((v - b.sy) * s.pattern_freq / span + s.pattern_phase, 1.0) < s.pattern_duty

    def vstripes() -> np.ndarray:
        return np.mod((u + width / 2.0) * s.pattern_freq / width + s.pattern_phase, 1.0) < (
            s.pattern_duty
        )

    if s.pattern == PATTERN_HSTRIPES:
        return hstripes()
    if s.pattern == PATTERN_VSTRIPES:
        return vstripes()
    if s.pattern == PATTERN_CHECKS:
        return hstripes() ^ vstripes()
    if s.pattern == PATTERN_BLOCK:
        return v < b.sy + (0.3 + 0.35 * s.pattern_phase) * span
    if s.pattern == PATTERN_SASH:
        slope = 0.9 if s.pattern_phase < 0.5 else -0.9
        return np.abs((v - b.sy - 0.5 * span) - slope * u) < 0.025 + 0.03 * s.pattern_duty
    if s.pattern == PATTERN_LOGO:
        if view != VIEW_FRONT:
            return None  # a logo is only seen from the front (docs/synthetic.md)
        r = s.logo_size * 0.45 * b.sh
        du, dv = u - s.logo_pos * 0.45 * b.sh, v - (b.sy + 0.3 * span)
        if s.logo_shape == LOGO_CIRCLE:
            return du * du + dv * dv < r * r
        if s.logo_shape == LOGO_SQUARE:
            return np.maximum(np.abs(du), np.abs(dv)) < 0.85 * r
        if s.logo_shape == LOGO_DIAMOND:
            return np.abs(du) + np.abs(dv) < 1.15 * r
        return (dv < 0.6 * r) & (dv > -r + 2.0 * np.abs(du))  # triangle, apex up
    raise ValueError(f"SynVI: unknown pattern code {s.pattern}")


def _occlude(
    draw: ImageDraw.ImageDraw, camera: Camera, rng: np.random.Generator, hs: int, ws: int
) -> None:
    """Draw this camera's kind of foreground occluder."""
    if camera.occluder == OCCLUDER_BOTTOM:  # bench, car bonnet, railing
        y0 = hs * (1.0 - rng.uniform(0.12, 0.3))
        x0 = ws * rng.uniform(-0.5, 0.3)
        draw.rectangle((x0, y0, x0 + ws * rng.uniform(0.7, 1.5), hs), fill=OCCLUDER)
    elif camera.occluder == OCCLUDER_POLE:  # pillar, lamp post, sign
        x0 = ws * rng.uniform(-0.05, 0.95)
        draw.rectangle((x0, 0, x0 + ws * rng.uniform(0.06, 0.16), hs), fill=OCCLUDER)
    else:  # a passer-by at the edge of the crop
        cx = ws * (rng.choice((-0.05, 1.05)))
        cy = hs * rng.uniform(0.35, 0.7)
        rx, ry = ws * rng.uniform(0.15, 0.3), hs * rng.uniform(0.25, 0.45)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=OCCLUDER)


#: Palette of a 0/1 mask rendered as 0/255 (person coverage after box averaging).
_MASK_LUT = np.array([[0.0] * 3, [1.0] * 3])


def _box_colour(labels: np.ndarray, lut: np.ndarray, factor: int, mode: str) -> np.ndarray:
    """Colour a label map through ``lut`` and box-average it by ``factor``.

    Args:
        labels: Label map, shape ``(Hs, Ws)`` uint8.
        lut: Colour (or replicated intensity) of each label in [0, 1], shape ``(L, 3)``.
        factor: Supersampling factor (``Hs = factor * H``).
        mode: ``"RGB"`` for colour, ``"L"`` for a single channel (first ``lut`` column).

    Returns:
        Float32 image in [0, 1], shape ``(H, W, 3)`` for ``"RGB"`` or ``(H, W, 1)`` for ``"L"``.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(lut)] = np.clip(np.rint(lut * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(labels, "P")
    image.putpalette(palette.tobytes())
    coloured = image.convert(mode)
    if factor > 1:
        coloured = coloured.reduce(factor)
    out = np.asarray(coloured, dtype=np.float32) * np.float32(1.0 / 255.0)
    return out if out.ndim == 3 else out[..., None]


def render_labels(
    world: World, pid: int, cam: int, rng: np.random.Generator
) -> tuple[np.ndarray, float, float, float]:
    """Draw the label map of one image: scene crop, person, patterns and occluder.

    Args:
        world: The tree's world.
        pid: Identity.
        cam: Camera.
        rng: The image's own stream.

    Returns:
        ``(labels, cx, h, sh)``: the label map at render resolution, shape ``(Hs, Ws)`` uint8;
        the person's centre column and height in render pixels; its shoulder half-width in
        body units (for shading).
    """
    cfg, ss = world.config, world.supersample
    hs, ws = cfg.height * ss, cfg.width * ss
    camera = world.cameras[cam]
    scene = world.scenes[camera.scene_key]
    body = Body(world.identities[pid].shape)
    j = cfg.pose_jitter

    oy = int(rng.integers(0, 2 * scene.margin_y + 1))
    ox = int(rng.integers(0, 2 * scene.margin_x + 1))
    image = Image.fromarray(np.ascontiguousarray(scene.labels[oy : oy + hs, ox : ox + ws]))
    view = int(rng.choice(3, p=camera.view_probs))
    mirror = int(rng.choice((-1, 1))) if view == VIEW_SIDE else 1
    h = hs * camera.scale * float(np.clip(1.0 + 0.04 * j * rng.standard_normal(), 0.85, 1.15))
    foot = hs * (camera.foot_y + 0.012 * j * rng.standard_normal())
    cx = ws * (0.5 + camera.x_offset + 0.035 * j * rng.standard_normal())
    pose = _Pose(rng, j)
    painter = _Painter(image, cx + pose.lean * h, foot - h, h, mirror)
    if view == VIEW_SIDE:
        _draw_side(painter, body, pose)
    else:
        _draw_front_back(painter, body, view, pose)

    labels = np.array(image, dtype=np.uint8)
    target = COAT if body.s.coat != COAT_NONE else TOP
    ys, xs = np.nonzero(labels == target)
    if ys.size:
        u = (xs + 0.5 - painter.cx) / h * mirror
        if view == VIEW_BACK:
            u = -u  # the print is on the person's body: seen from behind it is mirrored
        v = (ys + 0.5 - painter.top) / h
        mask = pattern_mask(body, view, u, v)
        if mask is not None:
            pattern = COAT_PATTERN if target == COAT else TOP_PATTERN
            labels[ys[mask], xs[mask]] = pattern
    if rng.random() < cfg.occlusion:
        occluded = Image.fromarray(labels)
        _occlude(ImageDraw.Draw(occluded), camera, rng, hs, ws)
        labels = np.array(occluded, dtype=np.uint8)
    return labels, painter.cx, h, body.sh


#: Visible light per camera: log-exposure range and colour temperature range (red up, blue
#: down) of indoor (artificial, dim, warm) and outdoor (daylight, brighter, cooler) cameras, at
#: ``illumination = 1``.
INDOOR_LIGHT = ((-1.0, -0.35), (0.08, 0.28))
OUTDOOR_LIGHT = ((-0.25, 0.35), (-0.22, 0.0))
#: Per-image standard deviations, at ``illumination = 1``, of the log-exposure, the colour
#: temperature and the green-magenta tint (time of day, clouds, lamps switched on or off).
IMAGE_LIGHT_SD = (0.4, 0.1, 0.05)


def visible_light(world: World, pid: int, cam: int, index: int) -> tuple[float, np.ndarray]:
    """The light falling on one visible image: an exposure factor and a per-channel tint.

    Visible cameras see people under daylight or lamps; infrared cameras light the scene
    themselves, which is why infrared clustering is the more reliable one on the real data
    (docs/synthetic.md, "Visible light"). The draws come from streams of their own, so
    ``illumination = 0`` leaves every other random decision, and so older trees, unchanged.

    Args:
        world: The tree's world.
        pid: Identity.
        cam: Visible camera number.
        index: Image number within ``(pid, cam)``.

    Returns:
        ``(exposure, tint)``: a factor > 0 on all channels and a factor per RGB channel,
        shape ``(3,)``; ``(1.0, ones(3))`` when ``illumination = 0``.
    """
    strength = world.config.illumination
    if strength == 0.0:
        return 1.0, np.ones(3)
    layout_code = LAYOUT_CODE[world.layout]
    camera_rng = rng_for(world.seed, TAG_LIGHT, layout_code, cam)
    (lo, hi), (t_lo, t_hi) = INDOOR_LIGHT if world.cameras[cam].indoor else OUTDOOR_LIGHT
    log_level = strength * camera_rng.uniform(lo, hi)
    temperature = strength * camera_rng.uniform(t_lo, t_hi)
    image_rng = rng_for(world.seed, TAG_LIGHT, layout_code, cam, pid, index)
    z = np.clip(image_rng.standard_normal(3), -2.5, 2.5)
    sd_exposure, sd_temperature, sd_tint = IMAGE_LIGHT_SD
    exposure = math.exp(log_level + strength * sd_exposure * z[0])
    temperature += strength * sd_temperature * z[1]
    magenta = strength * sd_tint * z[2]
    tint = np.array([1.0 + temperature, 1.0 - magenta, 1.0 - temperature])
    return exposure, np.clip(tint, 0.5, 1.5)


def render_image(world: World, pid: int, cam: int, modality: Modality, index: int) -> np.ndarray:
    """Render one image of identity ``pid`` in camera ``cam`` and ``modality``.

    The image is a pure function of ``(world, pid, cam, modality, index)``: its random stream is
    keyed by those values, so generation order and parallelism do not change it.

    Args:
        world: The tree's world.
        pid: Identity.
        cam: Camera number (must capture ``modality``).
        modality: ``"visible"`` or ``"infrared"``.
        index: Image number within ``(pid, cam, modality)``.

    Returns:
        The written image, shape ``(H, W, 3)`` uint8; infrared images have three equal
        channels, as in SYSU-MM01 and RegDB (docs/synthetic.md).
    """
    camera = world.cameras[cam]
    if modality not in camera.modalities:
        raise ValueError(f"SynVI camera {cam} captures {camera.modalities}, not {modality!r}")
    cfg, ss = world.config, world.supersample
    layout_code = LAYOUT_CODE[world.layout]
    rng = rng_for(world.seed, TAG_IMAGE, layout_code, pid, cam, MODALITY_CODE[modality], index)
    labels, cx, h, sh = render_labels(world, pid, cam, rng)
    scene = world.scenes[camera.scene_key]
    appearance = world.identities[pid].appearance
    height, width = cfg.height, cfg.width
    # Colour the label map through a palette and box-average it to the written size (C code in
    # Pillow: the look-up and anti-aliasing dominate the cost otherwise).
    if modality == "visible":
        lut = np.zeros((NUM_LABELS, 3))
        lut[:NUM_SCENE_LABELS] = scene.colours
        lut[SKIN:OCCLUDER] = appearance.colours
        lut[OCCLUDER] = camera.occluder_colour
    else:
        lut = np.zeros((NUM_LABELS, 3))
        lut[:NUM_SCENE_LABELS] = scene.thermal[:, None]
        lut[SKIN:OCCLUDER] = appearance.thermal[:, None]
        lut[OCCLUDER] = camera.occluder_thermal
    img = _box_colour(labels, lut, ss, "RGB" if modality == "visible" else "L")
    person = (labels >= SKIN) & (labels < OCCLUDER)
    person_lr = _box_colour(person.view(np.uint8), _MASK_LUT, ss, "L")[..., 0]
    # Cylinder-like body shading: darker towards the silhouette edges (per column).
    xs = (np.arange(width, dtype=np.float32) + 0.5) * ss
    spread = np.clip(np.abs(xs - cx) / (h * (sh + 0.04)), 0.0, 1.0) ** 2
    bright = float(np.exp(cfg.brightness_jitter * np.clip(rng.standard_normal(), -2.5, 2.5)))
    yy = ((np.arange(height, dtype=np.float32) + 0.5) / height - 0.5)[:, None]
    xx = ((np.arange(width, dtype=np.float32) + 0.5) / width - 0.5)[None, :]

    if modality == "visible":
        gx, gy = camera.light_grad
        light = (1.0 + 2.0 * (gx * xx + gy * yy)) * (1.0 - BODY_SHADING * spread * person_lr)
        img *= light[..., None]
        exposure, tint = visible_light(world, pid, cam, index)
        gain = (camera.vis_gain * bright * exposure * tint).astype(np.float32)
        img = np.clip(img * gain + camera.vis_cast.astype(np.float32), 0.0, 1.0)
        img **= np.float32(camera.vis_gamma)
        # A dark exposure is amplified by the sensor, and its noise with it.
        noise_sd = camera.vis_noise / math.sqrt(min(exposure, 1.0))
    else:
        img *= (1.0 - IR_BODY_SHADING * spread * person_lr)[..., None]
        img = np.clip(camera.ir_gain * bright * img + camera.ir_offset, 0.0, 1.0)
        img **= np.float32(camera.ir_gamma)
        vignette = 1.0 - camera.ir_vignette * 2.0 * (yy * yy + xx * xx)
        img = img * vignette[..., None] + camera.ir_banding.astype(np.float32)[None, :, None]
        noise_sd = camera.ir_noise
    sigma = camera.blur * float(rng.uniform(0.6, 1.3))
    if sigma > 0.2:  # below this a Gaussian kernel is the identity at written resolution
        img = gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="nearest")
    img = img + rng.normal(0.0, noise_sd, size=img.shape).astype(np.float32)
    out = np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out
