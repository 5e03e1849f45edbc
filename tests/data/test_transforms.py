"""Channel augmentations and the train / eval pipelines (docs/method.md §4)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from gur_lightning.data.transforms import (
    ERASING_FILL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    Grey,
    RandomIntensityRemap,
    ToNormalizedFloat,
    build_eval_transform,
    build_train_transform,
)

# Constant channels R=1, G=2, B=3 make every branch recognisable from one pixel.
RGB = (1.0, 2.0, 3.0)
GREY_OF_RGB = 0.2989 * 1.0 + 0.5870 * 2.0 + 0.1140 * 3.0  # hand-computed luma: 1.8149


def _const_image(h: int = 4, w: int = 3) -> torch.Tensor:
    return torch.tensor(RGB).view(3, 1, 1).expand(3, h, w).clone()


def _classify(out: torch.Tensor) -> str:
    """Name the branch an augmentation took on a `_const_image` input."""
    px = out[:, 0, 0].tolist()
    assert torch.equal(out, out[:, :1, :1].expand_as(out)), "output must stay spatially constant"
    if px == list(RGB):
        return "identity"
    assert px[0] == px[1] == px[2], f"channels not replicated: {px}"
    for c, v in enumerate(RGB):
        if px[0] == v:
            return f"ch{c}"
    assert px[0] == pytest.approx(GREY_OF_RGB, abs=1e-6)
    return "grey"


def _photo(h: int = 40, w: int = 20, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def _normalise(arr: np.ndarray) -> torch.Tensor:
    """Independent ToTensor + Normalize in numpy: (HWC uint8) -> (3, H, W) float."""
    x = arr.astype(np.float64) / 255.0
    x = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


# ------------------------------------------------------------------ ChannelExchange
def test_channel_exchange_gray2_always_replicates_one_channel_uniformly() -> None:
    torch.manual_seed(0)
    aug = ChannelExchange(gray=2)
    counts = Counter(_classify(aug(_const_image())) for _ in range(3000))
    assert set(counts) == {"ch0", "ch1", "ch2"}  # never grey, never identity
    for c in ("ch0", "ch1", "ch2"):
        assert abs(counts[c] / 3000 - 1 / 3) < 0.04


def test_channel_exchange_gray3_grey_formula_and_frequency() -> None:
    torch.manual_seed(1)
    aug = ChannelExchange(gray=3)
    counts = Counter(_classify(aug(_const_image())) for _ in range(4000))
    assert set(counts) == {"ch0", "ch1", "ch2", "grey"}
    assert abs(counts["grey"] / 4000 - 1 / 4) < 0.03


def test_channel_exchange_keeps_input_unless_inplace() -> None:
    torch.manual_seed(0)
    img = torch.randn(3, 5, 4)
    before = img.clone()
    out = ChannelExchange()(img)
    assert torch.equal(img, before) and out.shape == img.shape
    assert any(torch.equal(out, img[c].expand(3, 5, 4)) for c in range(3))
    out = ChannelExchange(inplace=True)(img)
    assert out is img and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


# ------------------------------------------------------------------ ChannelAdapGray / Grey
def test_channel_adap_gray_branch_frequencies() -> None:
    torch.manual_seed(2)
    aug = ChannelAdapGray(p=0.5)
    n = 8000
    counts = Counter(_classify(aug(_const_image())) for _ in range(n))
    expected = {"ch0": 1 / 4, "ch1": 1 / 4, "ch2": 1 / 4, "grey": 1 / 8, "identity": 1 / 8}
    assert set(counts) == set(expected)
    for branch, prob in expected.items():
        assert abs(counts[branch] / n - prob) < 0.025, (branch, counts)


@pytest.mark.parametrize(("p", "absent"), [(0.0, "grey"), (1.0, "identity")])
def test_channel_adap_gray_extreme_p(p: float, absent: str) -> None:
    torch.manual_seed(3)
    counts = Counter(_classify(ChannelAdapGray(p=p)(_const_image())) for _ in range(400))
    assert absent not in counts and counts["ch0"] > 0


def test_grey_formula_on_random_pixels() -> None:
    img = torch.tensor([[[0.5, -1.0]], [[2.0, 0.25]], [[-0.3, 4.0]]])  # (3, 1, 2)
    expected = [0.2989 * 0.5 + 0.5870 * 2.0 + 0.1140 * -0.3, 0.2989 * -1 + 0.5870 * 0.25 + 0.456]
    out = Grey()(img)
    for c in range(3):
        assert out[c, 0].tolist() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ ChannelRandomErasing
def _erased_box(img: torch.Tensor, out: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box (top, left, h, w) of the changed pixels, checking it is a filled rectangle."""
    changed = (out != img).any(0)
    if not changed.any():
        return None
    rows = torch.nonzero(changed.any(1)).flatten()
    cols = torch.nonzero(changed.any(0)).flatten()
    top, left = int(rows[0]), int(cols[0])
    h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    fill = torch.tensor(ERASING_FILL, dtype=out.dtype).view(3, 1, 1)
    assert torch.equal(out[:, top : top + h, left : left + w], fill.expand(3, h, w))
    outside = torch.ones_like(changed)
    outside[top : top + h, left : left + w] = False
    assert torch.equal(out[:, outside], img[:, outside])
    return top, left, h, w


def test_random_erasing_rectangle_area_aspect_and_fill() -> None:
    torch.manual_seed(4)
    height, width = 200, 100
    area = height * width
    sl, sh, r1 = 0.02, 0.4, 0.3
    aug = ChannelRandomErasing(p=1.0, sl=sl, sh=sh, r1=r1)
    fractions = []
    for _ in range(300):
        img = torch.randn(3, height, width)
        box = _erased_box(img, aug(img))
        assert box is not None  # p = 1 and a 200x100 image: some attempt always fits
        _, _, h, w = box
        assert h < height and w < width
        # Rounding each side to an integer moves the area / aspect by < 10 % at these sizes.
        assert sl * area * 0.9 <= h * w <= sh * area * 1.1
        assert r1 * 0.9 <= h / w <= (1 / r1) * 1.1
        fractions.append(h * w / area)
    # The whole range is used, not just one end of it.
    assert min(fractions) < 0.06 and max(fractions) > 0.3


def test_random_erasing_probability() -> None:
    torch.manual_seed(5)
    aug = ChannelRandomErasing(p=0.5)
    hits = 0
    for _ in range(600):
        img = torch.randn(3, 64, 32)
        hits += _erased_box(img, aug(img)) is not None
    assert abs(hits / 600 - 0.5) < 0.07


def test_random_erasing_p0_and_impossible_rectangle_leave_image_unchanged() -> None:
    torch.manual_seed(6)
    img = torch.randn(3, 16, 16)
    assert torch.equal(ChannelRandomErasing(p=0.0)(img), img)
    # Area = whole square image with aspect 1 never fits strictly inside: attempts run out.
    never_fits = ChannelRandomErasing(p=1.0, sl=1.0, sh=1.0, r1=1.0, max_attempts=5)
    assert torch.equal(never_fits(img), img)


def test_random_erasing_copy_semantics() -> None:
    torch.manual_seed(7)
    img = torch.randn(3, 32, 16)
    before = img.clone()
    out = ChannelRandomErasing(p=1.0)(img)
    assert torch.equal(img, before) and not torch.equal(out, img) and out.shape == img.shape


@pytest.mark.parametrize(
    "kwargs",
    [{"p": 1.5}, {"sl": 0.5, "sh": 0.1}, {"r1": 0.0}, {"mean": (0.1, 0.2)}, {"max_attempts": 0}],
)
def test_random_erasing_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="ChannelRandomErasing"):
        ChannelRandomErasing(**kwargs)


@pytest.mark.parametrize("aug", [ChannelExchange(), ChannelAdapGray(), ChannelRandomErasing()])
def test_channel_augs_reject_non_normalised_input(aug: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        aug(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        aug(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_to_normalized_float_matches_numpy() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    out = ToNormalizedFloat()(torch.from_numpy(arr).permute(2, 0, 1).contiguous())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _normalise(arr), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ pipelines
@pytest.mark.parametrize(("modality", "view"), [("visible", 1), ("visible", 2), ("infrared", 1)])
@pytest.mark.parametrize(("height", "width"), [(24, 12), (36, 20)])
def test_train_transform_output_shape(modality: str, view: int, height: int, width: int) -> None:
    torch.manual_seed(8)
    tf = build_train_transform(height, width, modality, view)
    out = tf(_photo())
    assert out.shape == (3, height, width) and out.dtype == torch.float32


def test_visible_view2_is_always_single_channel_and_view1_is_not() -> None:
    torch.manual_seed(9)
    img = _photo()
    v1 = build_train_transform(24, 12, "visible", 1, erasing_p=0.0)
    v2 = build_train_transform(24, 12, "visible", 2)
    for _ in range(20):
        out = v2(img)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert not torch.equal(v1(img)[0], v1(img)[1])


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_train_transform_without_randomness_equals_resize_and_normalise(backend: str) -> None:
    img = _photo(37, 19)
    tf = build_train_transform(
        24, 12, "visible", pad=0, flip_p=0.0, erasing_p=0.0, resize_backend=backend
    )
    expected = _normalise(np.asarray(img.resize((12, 24), Image.BICUBIC)))
    # PIL itself is exact; torch's antialiased bicubic differs by at most one grey level.
    atol = 1e-5 if backend == "pil" else 1.01 / 255 / min(IMAGENET_STD)
    torch.testing.assert_close(tf(img), expected, atol=atol, rtol=0)


def test_train_transform_pad_crop_flip_is_a_window_of_the_padded_image() -> None:
    torch.manual_seed(10)
    img = _photo(40, 20)
    h, w, pad = 24, 12, 3
    resized = np.asarray(img.resize((w, h), Image.BICUBIC))
    padded = _normalise(np.pad(resized, ((pad, pad), (pad, pad), (0, 0))))  # black border
    tf = build_train_transform(
        h, w, "visible", pad=pad, flip_p=1.0, erasing_p=0.0, resize_backend="pil"
    )
    offsets = set()
    for _ in range(60):
        out = tf(img).flip(-1)  # flip_p = 1: undo the flip
        found = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if torch.allclose(out, padded[:, i : i + h, j : j + w], atol=1e-5)
        ]
        assert found, "output is not a crop of the zero-padded resized image"
        offsets.update(found)
    assert len(offsets) > 10  # the crop position is random


def test_eval_transforms_match_pil_reference() -> None:
    img = _photo(50, 23)
    for resample, pil_mode in (("lanczos", Image.LANCZOS), ("bicubic", Image.BICUBIC)):
        tf = build_eval_transform(24, 12, resample, resize_backend="pil")
        expected = _normalise(np.asarray(img.resize((12, 24), pil_mode)))
        torch.testing.assert_close(tf(img), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(tf(img), tf(img), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((24, 12, "thermal"), "modality"),
        ((24, 12, "infrared", 2), "views"),
        ((24, 12, "visible", 3), "views"),
        ((0, 12, "visible"), "size"),
    ],
)
def test_build_train_transform_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_train_transform(*args)


def test_build_eval_transform_rejects_unknown_resample() -> None:
    with pytest.raises(ValueError, match="resample"):
        build_eval_transform(24, 12, "nearest")
    with pytest.raises(ValueError, match="resize_backend"):
        build_eval_transform(24, 12, resize_backend="cv2")


def test_erasing_area_fraction_closed_form_mean() -> None:
    """Mean erased fraction ~ E[U(sl, sh)] = (sl + sh) / 2 on a large image (rounding aside)."""
    torch.manual_seed(11)
    aug = ChannelRandomErasing(p=1.0, sl=0.02, sh=0.2, r1=0.5)
    h, w = 300, 300
    fracs = []
    for _ in range(200):
        img = torch.randn(3, h, w)
        _, _, bh, bw = _erased_box(img, aug(img))
        fracs.append(bh * bw / (h * w))
    assert math.isclose(float(np.mean(fracs)), 0.11, abs_tol=0.015)


# ----------------------------------------------------------------------------- intensity remap


@pytest.mark.parametrize("knots", [1, 3, 5])
def test_intensity_remap_is_the_interpolated_random_curve(knots: int) -> None:
    ramp = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(3, 16, 16)
    torch.manual_seed(knots)
    out = RandomIntensityRemap(p=1.0, knots=knots)(ramp)
    # The same draws by hand: the probability test, then knots + 1 levels in [0, 255].
    torch.manual_seed(knots)
    torch.rand(1)
    levels = (torch.rand(knots + 1) * 255.0).numpy()
    curve = np.interp(np.arange(256), np.linspace(0, 255, knots + 1), levels)
    expected = np.floor(curve + 0.5).astype(np.uint8)  # round half up; ties are measure zero
    for channel in range(3):
        np.testing.assert_allclose(out[channel].reshape(-1).numpy(), expected, atol=1)
    assert out.dtype == torch.uint8 and out.shape == ramp.shape


def test_intensity_remap_probability_and_pass_through() -> None:
    img = torch.randint(0, 256, (3, 8, 4), dtype=torch.uint8)
    assert RandomIntensityRemap(p=0.0)(img) is img
    torch.manual_seed(0)
    remap = RandomIntensityRemap(p=0.3)
    changed = sum(not torch.equal(remap(img), img) for _ in range(2000))
    assert abs(changed / 2000 - 0.3) < 0.04  # 4 sigma of a binomial(2000, 0.3) frequency


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"p": 1.5}, "p must lie in"), ({"knots": 0}, "knots must be an integer >= 1")],
)
def test_intensity_remap_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RandomIntensityRemap(**kwargs)


def test_intensity_remap_reaches_infrared_and_visible_view2_only() -> None:
    def remaps(modality: str, view: int, p: float) -> bool:
        tf = build_train_transform(16, 8, modality, view, intensity_remap_p=p)
        return any(isinstance(step, RandomIntensityRemap) for step in tf.transforms)

    assert remaps("infrared", 1, 0.5) and remaps("visible", 2, 0.5)
    assert not remaps("visible", 1, 0.5)
    assert not any(remaps(m, v, 0.0) for m, v in (("infrared", 1), ("visible", 2)))
