"""Image pre-processing and the GUR channel augmentations (docs/method.md §4).

Every training and evaluation pipeline here maps a decoded PIL RGB image to a normalised
``float32`` tensor of shape ``(3, H, W)``. The channel augmentations act on that normalised
tensor, after ``Normalize``, exactly where the reference (``ChannelAug.py``) applies them.

Backend choice (measured with ``python -m gur_lightning.bench data``, one thread, 128x64 JPEGs):
the pipelines use ``torchvision.transforms.v2`` on ``uint8`` tensors. The decoded image is turned
into a ``uint8`` CHW tensor first, resized with torch's antialiased bicubic kernel (the same
a = -0.5 cubic as PIL; outputs differ from PIL's by at most one grey level on under 1 % of the
pixels), padded, cropped and flipped as ``uint8``, and converted to normalised ``float32`` in one
fused pass. At 288x144 a view (decode included) is about 1.5x faster than with the
reference-style v1 chain on PIL images (PIL's bicubic upsampling alone costs about four times
torch's ``uint8`` kernel); at 96x48 the two are equal. ``resize_backend="pil"`` restores PIL's
bicubic resize for bit-parity with the reference.

Randomness: every random draw uses torch's global generator (``torch.rand`` /
``torch.randint``), as torchvision's own random transforms do. A ``DataLoader`` seeds torch
differently in each worker from its base seed, so the augmentations are reproducible under
``seed_everything(..., workers=True)`` and never repeat across workers. The reference draws
from Python's ``random`` instead; the distributions are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from gur_lightning.data import options
from gur_lightning.data.samples import MODALITIES

__all__ = [
    "ERASING_FILL",
    "GREY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ChannelAdapGray",
    "ChannelExchange",
    "ChannelRandomErasing",
    "Grey",
    "RandomIntensityRemap",
    "ToNormalizedFloat",
    "build_eval_transform",
    "build_train_transform",
]

#: ImageNet statistics used by ``Normalize`` in every pipeline (docs/method.md §4).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Per-channel fill of ``ChannelRandomErasing``: CIFAR means written into an already normalised
#: tensor, a reference quirk kept for parity (docs/method.md §4, §17.16).
ERASING_FILL: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: ITU-R BT.601 luma weights used by the reference's grey conversion (``ChannelAug.py``).
GREY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.5870, 0.1140)

#: Number of colour channels every pipeline produces.
_CHANNELS = 3
_RESAMPLE_MODES: dict[str, InterpolationMode] = {
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}
_RESIZE_BACKENDS = ("tensor", "pil")


def _check_image(img: Tensor, who: str) -> None:
    """Raise a clear error unless ``img`` is a floating-point ``(3, H, W)`` tensor."""
    if not isinstance(img, Tensor) or img.ndim != 3 or img.shape[0] != _CHANNELS:
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"{who} expects a (3, H, W) image tensor, got {shape}")
    if not img.is_floating_point():
        raise ValueError(
            f"{who} acts on normalised floating-point tensors (after Normalize), got {img.dtype}"
        )


def _check_probability(value: float, name: str, who: str) -> None:
    """Raise unless ``value`` is a probability in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{who}: {name} must lie in [0, 1], got {value}")


def _grey(img: Tensor) -> Tensor:
    """Luma of a ``(3, H, W)`` tensor, shape ``(H, W)`` (reference weights, §4)."""
    r, g, b = GREY_WEIGHTS
    return img[0] * r + img[1] * g + img[2] * b


def _replicate(img: Tensor, plane: Tensor, inplace: bool) -> Tensor:
    """Write ``plane`` (shape ``(H, W)``) into all three channels, shape ``(3, H, W)``."""
    if inplace:
        img.copy_(plane.expand_as(img))
        return img
    return plane.expand_as(img).clone()


class ChannelRandomErasing(nn.Module):
    """Random erasing with a constant per-channel fill (docs/method.md §4).

    With probability ``p`` up to ``max_attempts`` rectangles are proposed. Each has area
    ``U(sl, sh) * H * W`` and aspect ratio (height / width) ``U(r1, 1 / r1)``; its side lengths
    are rounded to integers. The first one that fits strictly inside the image (height < H and
    width < W) is placed uniformly at random and channel ``c`` of it is set to ``mean[c]``.

    Args:
        p: Probability of erasing.
        sl: Smallest erased area, as a fraction of the image area.
        sh: Largest erased area, as a fraction of the image area.
        r1: Smallest aspect ratio; the largest is ``1 / r1``.
        mean: Per-channel fill value (already in normalised units, see ``ERASING_FILL``).
        max_attempts: Proposals tried before giving up and returning the image unchanged.
        inplace: Modify the input tensor instead of a copy (safe inside a pipeline that owns it).
    """

    def __init__(
        self,
        p: float = options.ERASING_P,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        mean: Sequence[float] = ERASING_FILL,
        max_attempts: int = 100,
        *,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        _check_probability(p, "p", who)
        if not 0.0 < sl <= sh <= 1.0:
            raise ValueError(f"{who}: need 0 < sl <= sh <= 1, got sl={sl}, sh={sh}")
        if not 0.0 < r1 <= 1.0:
            raise ValueError(f"{who}: r1 must lie in (0, 1], got {r1}")
        if len(mean) != _CHANNELS:
            raise ValueError(f"{who}: mean needs {_CHANNELS} values, got {tuple(mean)}")
        if max_attempts < 1:
            raise ValueError(f"{who}: max_attempts must be >= 1, got {max_attempts}")
        self.p = p
        self.sl = sl
        self.sh = sh
        self.r1 = r1
        self.mean = tuple(float(m) for m in mean)
        self.max_attempts = max_attempts
        self.inplace = inplace

    def forward(self, img: Tensor) -> Tensor:
        """Erase one random rectangle with probability ``p``.

        Args:
            img: Normalised image, shape ``(3, H, W)``.

        Returns:
            The image with at most one rectangle filled, shape ``(3, H, W)``.
        """
        _check_image(img, type(self).__name__)
        if torch.rand(()).item() >= self.p:
            return img
        _, height, width = img.shape
        area = height * width
        for _ in range(self.max_attempts):
            u_area, u_ratio = torch.rand(2).tolist()
            target_area = (self.sl + (self.sh - self.sl) * u_area) * area
            aspect = self.r1 + (1.0 / self.r1 - self.r1) * u_ratio
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                out = img if self.inplace else img.clone()
                fill = torch.tensor(self.mean, dtype=img.dtype, device=img.device)
                out[:, top : top + h, left : left + w] = fill.view(_CHANNELS, 1, 1)
                return out
        return img

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"p={self.p}, sl={self.sl}, sh={self.sh}, r1={self.r1}, mean={self.mean}, "
            f"max_attempts={self.max_attempts}"
        )


class ChannelExchange(nn.Module):
    """Replace the image by one replicated colour channel (docs/method.md §4).

    ``idx`` is uniform in ``{0, ..., gray}``. For ``idx`` in ``{0, 1, 2}`` all three channels
    become channel ``idx``; otherwise they become the grey image ``0.2989 R + 0.5870 G +
    0.1140 B``. With the reference's ``gray=2`` the grey branch is unreachable, so RGB view 2 is
    always a single replicated channel (§17.17, kept).

    Args:
        gray: Largest value of ``idx``; grey is produced with probability
            ``max(gray - 2, 0) / (gray + 1)``.
        inplace: Modify the input tensor instead of a copy.
    """

    def __init__(self, gray: int = 2, *, inplace: bool = False) -> None:
        super().__init__()
        if gray < 0:
            raise ValueError(f"ChannelExchange: gray must be >= 0, got {gray}")
        self.gray = gray
        self.inplace = inplace

    def forward(self, img: Tensor) -> Tensor:
        """Apply the exchange.

        Args:
            img: Normalised image, shape ``(3, H, W)``.

        Returns:
            Three identical channels, shape ``(3, H, W)``.
        """
        _check_image(img, type(self).__name__)
        idx = int(torch.randint(0, self.gray + 1, ()).item())
        plane = img[idx] if idx < _CHANNELS else _grey(img)
        return _replicate(img, plane, self.inplace)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"gray={self.gray}"


class ChannelAdapGray(nn.Module):
    """The infrared channel augmentation (docs/method.md §4, ``ChannelAug.py:86-128``).

    ``idx`` is uniform in ``{0, 1, 2, 3}``. For ``idx`` in ``{0, 1, 2}`` the image becomes
    channel ``idx`` replicated; for ``idx == 3`` it becomes grey with probability ``p`` and is
    left unchanged otherwise. With ``p = 0.5``: 3/4 single channel, 1/8 grey, 1/8 identity.

    Args:
        p: Probability of grey within the ``idx == 3`` branch.
        inplace: Modify the input tensor instead of a copy.
    """

    def __init__(self, p: float = options.ADAP_GRAY_P, *, inplace: bool = False) -> None:
        super().__init__()
        _check_probability(p, "p", type(self).__name__)
        self.p = p
        self.inplace = inplace

    def forward(self, img: Tensor) -> Tensor:
        """Apply the augmentation.

        Args:
            img: Normalised image, shape ``(3, H, W)``.

        Returns:
            The augmented image, shape ``(3, H, W)``.
        """
        _check_image(img, type(self).__name__)
        idx = int(torch.randint(0, _CHANNELS + 1, ()).item())
        if idx < _CHANNELS:
            return _replicate(img, img[idx], self.inplace)
        if torch.rand(()).item() < self.p:
            return _replicate(img, _grey(img), self.inplace)
        return img

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"p={self.p}"


class Grey(nn.Module):
    """Deterministic grey conversion, replicated to three channels (reference ``Gray``, unused).

    Args:
        inplace: Modify the input tensor instead of a copy.
    """

    def __init__(self, *, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, img: Tensor) -> Tensor:
        """Convert to grey.

        Args:
            img: Normalised image, shape ``(3, H, W)``.

        Returns:
            ``0.2989 R + 0.5870 G + 0.1140 B`` in all three channels, shape ``(3, H, W)``.
        """
        _check_image(img, type(self).__name__)
        return _replicate(img, _grey(img), self.inplace)


class RandomIntensityRemap(nn.Module):
    """Map grey levels through a random, generally non-monotonic curve (not in the reference).

    With probability ``p`` a curve is drawn: ``knots + 1`` levels uniform in [0, 255] at evenly
    spaced inputs, linearly interpolated into a 256-entry table, and applied to every channel of
    the ``uint8`` image. Brightness order is scrambled while edges stay edges, so features must
    rest on shape rather than on intensity values. It is the bridge when infrared intensities
    carry no information about visible colour, as on SynVI, where the channel augmentations
    (which assume infrared resembles one colour channel) cannot bridge (docs/synthetic.md, first
    calibration study).

    Args:
        p: Probability of remapping an image.
        knots: Number of linear pieces of the curve (>= 1; 1 is a random affine map).
    """

    def __init__(self, p: float = 0.5, knots: int = options.INTENSITY_REMAP_KNOTS) -> None:
        super().__init__()
        _check_probability(p, "p", type(self).__name__)
        if isinstance(knots, bool) or not isinstance(knots, int) or knots < 1:
            raise ValueError(f"RandomIntensityRemap: knots must be an integer >= 1, got {knots!r}")
        self.p = float(p)
        self.knots = knots

    def forward(self, img: Tensor) -> Tensor:
        """Remap (or pass through) one image.

        Args:
            img: ``uint8`` image, shape ``(3, H, W)``.

        Returns:
            ``uint8`` image of the same shape.
        """
        if img.dtype != torch.uint8:
            raise ValueError(f"RandomIntensityRemap expects a uint8 image, got {img.dtype}")
        if torch.rand(1).item() >= self.p:
            return img
        levels = torch.rand(self.knots + 1) * 255.0
        # Position of every grey level between the knots, then linear interpolation.
        x = torch.arange(256, dtype=torch.float32) * (self.knots / 255.0)
        left = x.floor().clamp_(max=self.knots - 1).long()
        frac = x - left
        table = levels[left] * (1.0 - frac) + levels[left + 1] * frac
        table = table.round_().to(torch.uint8)
        return table[img.long()]

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"p={self.p}, knots={self.knots}"


class ToNormalizedFloat(nn.Module):
    """``ToTensor`` + ``Normalize`` fused for ``uint8`` CHW input (docs/method.md §4).

    Computes ``(x / 255 - mean) / std`` as ``x * (1 / (255 std)) - mean / std`` in a single
    pass over a fresh ``float32`` tensor (the two torchvision steps cost about twice as much).

    Args:
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel standard deviation in [0, 1] units.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        if len(mean) != _CHANNELS or len(std) != _CHANNELS:
            raise ValueError(
                f"ToNormalizedFloat: mean and std need {_CHANNELS} values each, "
                f"got mean={tuple(mean)}, std={tuple(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"ToNormalizedFloat: std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Plain attributes, not buffers: a transform never moves devices and must pickle cheaply
        # into DataLoader workers.
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(_CHANNELS, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)])
        self._shift = self._shift.view(_CHANNELS, 1, 1)

    def forward(self, img: Tensor) -> Tensor:
        """Convert and normalise.

        Args:
            img: ``uint8`` image, shape ``(3, H, W)``.

        Returns:
            Normalised ``float32`` image, shape ``(3, H, W)``.
        """
        if not isinstance(img, Tensor) or img.dtype != torch.uint8 or img.ndim != 3:
            got = (img.dtype, tuple(img.shape)) if isinstance(img, Tensor) else type(img)
            raise ValueError(f"ToNormalizedFloat expects a uint8 (3, H, W) tensor, got {got}")
        if img.shape[0] != _CHANNELS:
            raise ValueError(
                f"ToNormalizedFloat expects {_CHANNELS} channels (RGB), got {img.shape[0]}"
            )
        return img.to(torch.float32).mul_(self._scale).add_(self._shift)

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"mean={self.mean}, std={self.std}"


def _resize_steps(
    height: int, width: int, interpolation: InterpolationMode, backend: str
) -> list[Callable]:
    """PIL image -> resized ``uint8`` ``(3, height, width)`` tensor, on the chosen backend."""
    resize = v2.Resize((height, width), interpolation=interpolation, antialias=True)
    if backend == "tensor":
        return [v2.PILToTensor(), resize]
    return [resize, v2.PILToTensor()]


def _check_size(height: int, width: int) -> None:
    """Raise unless the output size is positive."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")


def _check_backend(resize_backend: str) -> None:
    """Raise unless ``resize_backend`` is known."""
    if resize_backend not in _RESIZE_BACKENDS:
        raise ValueError(
            f"resize_backend must be one of {_RESIZE_BACKENDS}, got {resize_backend!r}"
        )


def build_train_transform(
    height: int,
    width: int,
    modality: str,
    view: int = 1,
    *,
    pad: int = options.PAD,
    flip_p: float = options.FLIP_P,
    erasing_p: float = options.ERASING_P,
    adap_gray_p: float = options.ADAP_GRAY_P,
    exchange_gray: int = 2,
    intensity_remap_p: float = options.INTENSITY_REMAP_P,
    intensity_remap_knots: int = options.INTENSITY_REMAP_KNOTS,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize_backend: str = "tensor",
) -> Callable[[Image.Image], Tensor]:
    """Build one of the three training pipelines of docs/method.md §4.

    * visible, view 1 (``train_transformer_rgb``): Resize((H, W), bicubic) -> Pad(pad) ->
      RandomCrop((H, W)) -> RandomHorizontalFlip(flip_p) -> ToTensor -> Normalize ->
      ChannelRandomErasing(erasing_p);
    * visible, view 2 (``train_transformer_rgb1``): view 1, then ChannelExchange(exchange_gray);
    * infrared (``transform_thermal``): view 1's steps, then ChannelAdapGray(adap_gray_p).

    Pad fills with black (0) before normalisation, as the reference does. With
    ``intensity_remap_p > 0`` (not in the reference; default off), infrared images and visible
    view 2 pass through :class:`RandomIntensityRemap` before normalisation; visible view 1 keeps
    its colours, so the two visible views teach one identity under both looks.

    Args:
        height: Output height H (reference 288).
        width: Output width W (reference 144).
        modality: ``"visible"`` or ``"infrared"``.
        view: 1 or 2 for visible images; infrared has only view 1.
        pad: Zero padding on every side before the random crop.
        flip_p: Horizontal-flip probability.
        erasing_p: ``ChannelRandomErasing`` probability.
        adap_gray_p: Grey probability inside ``ChannelAdapGray``'s ``idx == 3`` branch.
        exchange_gray: ``gray`` argument of view 2's ``ChannelExchange``.
        intensity_remap_p: :class:`RandomIntensityRemap` probability (0: off, the reference).
        intensity_remap_knots: Linear pieces of the remap curve.
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        resize_backend: ``"tensor"`` (fast, torch antialiased bicubic on ``uint8``) or ``"pil"``
            (PIL bicubic, bit-identical to the reference's resize).

    Returns:
        A callable mapping a PIL RGB image to a normalised ``float32`` tensor ``(3, H, W)``.

    Raises:
        ValueError: On an unknown modality or view, a non-positive size, a negative pad or an
            unknown ``resize_backend``.
    """
    _check_size(height, width)
    _check_backend(resize_backend)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    allowed_views = (1, 2) if modality == "visible" else (1,)
    if view not in allowed_views:
        raise ValueError(f"{modality} training pipelines have views {allowed_views}, got {view}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    _check_probability(flip_p, "flip_p", "build_train_transform")
    _check_probability(intensity_remap_p, "intensity_remap_p", "build_train_transform")
    steps: list[Callable] = _resize_steps(height, width, InterpolationMode.BICUBIC, resize_backend)
    steps += [
        v2.Pad(pad, fill=0),
        v2.RandomCrop((height, width)),
        v2.RandomHorizontalFlip(flip_p),
    ]
    if intensity_remap_p > 0 and (modality == "infrared" or view == 2):
        steps.append(RandomIntensityRemap(intensity_remap_p, intensity_remap_knots))
    steps += [
        ToNormalizedFloat(mean, std),
        # The tensor is fresh from ToNormalizedFloat, so the channel steps may work in place.
        ChannelRandomErasing(erasing_p, inplace=True),
    ]
    if modality == "infrared":
        steps.append(ChannelAdapGray(adap_gray_p, inplace=True))
    elif view == 2:
        steps.append(ChannelExchange(exchange_gray, inplace=True))
    return v2.Compose(steps)


def build_eval_transform(
    height: int,
    width: int,
    resample: str = "bicubic",
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize_backend: str = "tensor",
) -> Callable[[Image.Image], Tensor]:
    """Build the deterministic feature-extraction pipeline (docs/method.md §4 table, §17.18).

    ``"bicubic"`` is the clustering loader's ``Resize((H, W), bicubic) -> ToTensor ->
    Normalize``. ``"lanczos"`` is the final test's ``img.resize((W, H), ANTIALIAS)`` (Lanczos in
    PIL) followed by ToTensor and Normalize; the reference's extra bilinear ``Resize`` to the same
    size is a no-op and is omitted. Lanczos always runs in PIL (torch has no Lanczos kernel).

    Args:
        height: Output height H.
        width: Output width W.
        resample: ``"bicubic"`` (clustering) or ``"lanczos"`` (final test).
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        resize_backend: Backend of the bicubic resize, as in :func:`build_train_transform`.

    Returns:
        A callable mapping a PIL RGB image to a normalised ``float32`` tensor ``(3, H, W)``.

    Raises:
        ValueError: On an unknown ``resample`` or ``resize_backend`` or a non-positive size.
    """
    _check_size(height, width)
    _check_backend(resize_backend)
    if resample not in _RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {tuple(_RESAMPLE_MODES)}, got {resample!r}")
    backend = "pil" if resample == "lanczos" else resize_backend
    steps = _resize_steps(height, width, _RESAMPLE_MODES[resample], backend)
    steps.append(ToNormalizedFloat(mean, std))
    return v2.Compose(steps)
