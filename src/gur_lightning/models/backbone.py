"""Two-stream ResNet: per-modality stems, shared body, GeM, BN-neck (docs/method.md §3).

The reference builds three ImageNet ResNet-50 copies and uses only the stems (conv1, bn1, relu,
maxpool) of two of them and layer1-4 of the third (docs/method.md §3). Here the stems are built
from conv1/bn1 only, which is the same function without the unused parameters (docs/method.md
§17.21). Both modalities pass the shared body in ONE call, so BatchNorm statistics are computed
over the visible and infrared images together, as on a single reference replica (docs/method.md §3,
§17.15). With ``bn_replicas = R > 1`` every BatchNorm normalises per virtual DataParallel replica
(:mod:`gur_lightning.models.replica_bn`), as the reference's four GPUs did.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from gur_lightning.models.options import (
    BN_REPLICAS,
    DEPTH,
    GEM_P,
    LAST_STRIDE,
    SUPPORTED_DEPTHS,
    SYNVI_PRETRAINED,
)
from gur_lightning.models.replica_bn import convert_replica_batchnorm, set_replicas
from gur_lightning.utils.checkpoints import CheckpointError, check_state_dict_fits, load_checkpoint
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "DEPTHS",
    "DualStreamResNet",
    "GeM",
    "NonLocalBlock",
    "load_imagenet_state_dict",
    "resolve_pretrained_path",
]

#: torchvision constructor and ImageNet weights enum per supported depth.
DEPTHS: dict[int, tuple[str, str]] = {
    depth: (f"resnet{depth}", f"ResNet{depth}_Weights") for depth in SUPPORTED_DEPTHS
}

#: Older torchvision file names of the same ImageNet V1 weights; the reference loads
#: ``resnet50-19c8e357.pth`` (docs/method.md §3). Accepted in the cache as well.
_LEGACY_FILES: dict[int, str] = {
    18: "resnet18-5c106cde.pth",
    34: "resnet34-333f7ec4.pth",
    50: "resnet50-19c8e357.pth",
}

#: Added to the mean of cubes before the root, as in the reference (docs/method.md §3).
GEM_EPS: float = 1e-12
#: BN-neck weight init N(1, 0.01) of ``weights_init_kaiming`` (docs/method.md §3).
BNNECK_WEIGHT_STD: float = 0.01
#: AGW "non-local (down)" placement: blocks after the last 2 blocks of layer2 and the last 3
#: of layer3 (AGW's ``non_layers = [0, 2, 3, 0]``). Off by default, as in the reference.
NON_LOCAL_LAYERS: dict[str, int] = {"layer2": 2, "layer3": 3}


class GeM(nn.Module):
    """Generalised-mean pooling with a fixed exponent (docs/method.md §3).

    ``pool_c = (mean_{h,w} x_{c,h,w}^p + eps)^(1/p)``; the eps sits inside the root, after the
    mean, exactly as in the reference. The pooling is computed in fp32 for half-precision inputs
    (cubes of bf16 activations lose too much precision), so the features leave in fp32 (fp64
    inputs stay fp64).
    """

    def __init__(self, p: float = GEM_P, eps: float = GEM_EPS) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM: exponent p must be positive, got {p}")
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        """Pool a feature map.

        Args:
            x: ``(B, C, H, W)`` non-negative activations (post-ReLU), any floating dtype.

        Returns:
            ``(B, C)`` fp32 (fp64 for fp64 input).
        """
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return (x.pow(self.p).mean(dim=(2, 3)) + self.eps).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        """Show the fixed exponent."""
        return f"p={self.p}, eps={self.eps}"


class NonLocalBlock(nn.Module):
    """Non-local block (Wang et al., CVPR 2018) with a residual connection, as AGW uses it.

    ``z = x + BN(W y)``, ``y_i = sum_j f(x_i, x_j) g(x_j)`` with 1×1 convolutions theta, phi, g
    to ``C / reduction`` channels. The BN after W starts at weight 0 and bias 0, so the block is
    the identity at initialisation and an ImageNet backbone keeps its function.

    Args:
        in_channels: Channels C of the input map.
        reduction: Channel reduction of the embedding (AGW: 2).
        pairwise: ``"embedded_gaussian"`` (softmax over positions, the standard form) or
            ``"dot_product"`` (divide by the number of positions N, AGW's variant).
    """

    def __init__(
        self, in_channels: int, reduction: int = 2, pairwise: str = "embedded_gaussian"
    ) -> None:
        super().__init__()
        if pairwise not in ("embedded_gaussian", "dot_product"):
            raise ValueError(
                f"NonLocalBlock: pairwise must be 'embedded_gaussian' or 'dot_product', "
                f"got {pairwise!r}"
            )
        inter = max(in_channels // reduction, 1)
        self.pairwise = pairwise
        self.theta = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.g = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.W = nn.Sequential(
            nn.Conv2d(inter, in_channels, kernel_size=1), nn.BatchNorm2d(in_channels)
        )
        # Zero-initialised output BN: identity block at init (Wang et al. §4.1).
        out_bn = self.W[1]
        assert isinstance(out_bn, nn.BatchNorm2d)
        nn.init.zeros_(out_bn.weight)
        nn.init.zeros_(out_bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, C, H, W)``.
        """
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        affinity = theta @ phi  # (B, N, N)
        if self.pairwise == "embedded_gaussian":
            affinity = affinity.softmax(dim=-1)
        else:
            affinity = affinity / affinity.shape[-1]
        y = (affinity @ g).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.W(y)


def _with_non_local(layer: nn.Sequential, count: int, pairwise: str) -> nn.Sequential:
    """Insert ``count`` non-local blocks after the last ``count`` residual blocks of ``layer``."""
    blocks = list(layer)
    count = min(count, len(blocks))
    after = set(range(len(blocks) - count, len(blocks)))
    out: list[nn.Module] = []
    for i, block in enumerate(blocks):
        out.append(block)
        if i in after:
            channels = _out_channels(block)
            out.append(NonLocalBlock(channels, pairwise=pairwise))
    return nn.Sequential(*out)


def _out_channels(block: nn.Module) -> int:
    """Output channels of a torchvision BasicBlock/Bottleneck (its last BatchNorm2d)."""
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    # downsample's BN comes last in module order but has the same width as the main path.
    return bns[-1].num_features


def resolve_pretrained_path(pretrained: str | os.PathLike[str], depth: int) -> Path:
    """Resolve the ``pretrained`` option to an existing local weights file; never download.

    Args:
        pretrained: A path to a torchvision ImageNet state dict, or ``"torchvision"`` for
            torchvision's local cache (``$TORCH_HOME/hub/checkpoints``, see
            ``torch.hub.get_dir()``).
        depth: ResNet depth (18, 34 or 50), which picks the cached file name.

    Returns:
        The path of an existing file.

    Raises:
        FileNotFoundError: Naming the configured path, or the cache paths looked at.
        ValueError: For ``"synvi"``, which only the entry points can resolve.
    """
    if str(pretrained) == SYNVI_PRETRAINED:
        # The SynVI start depends on the benchmark's image size and preset, which the network
        # does not know: the entry points resolve it to a file before the network is built.
        raise ValueError(
            f"pretrained={SYNVI_PRETRAINED!r} names the SynVI pretrained start, which depends on "
            "the benchmark's image size and preset: gur_lightning.train and "
            "gur_lightning.evaluate resolve it (building it on first use); elsewhere pass the "
            "weights file of gur_lightning.pretrain.ensure_pretrained_start(...)"
        )
    if str(pretrained) == "torchvision":
        _, weights_enum = DEPTHS[depth]
        url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        candidates = [cache / Path(url).name, cache / _LEGACY_FILES[depth]]
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"pretrained='torchvision': no ImageNet ResNet-{depth} weights in torchvision's local "
            f"cache; expected {candidates[0]} (or {candidates[1]}). Nothing is downloaded at run "
            "time: place the file there (or set TORCH_HOME), or give a file path instead."
        )
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist (expected a torchvision "
            f"ImageNet ResNet-{depth} state dict such as {_LEGACY_FILES[depth]})"
        )
    return path


def load_imagenet_state_dict(
    path: str | os.PathLike[str], *, expected: str = "a torchvision ResNet state dict"
) -> dict[str, Tensor]:
    """Read a torchvision ResNet state dict from ``path``, without its ``fc`` classifier.

    The file is loaded as data only (``weights_only=True``), like every checkpoint.

    Args:
        path: A ``.pth`` file holding a state dict (or a dict with a ``"state_dict"`` entry).
        expected: What the file should be, for the error message.

    Returns:
        The state dict, ``fc.*`` removed (docs/method.md §3: the reference drops it).

    Raises:
        CheckpointError: A ``ValueError`` naming ``path`` and ``expected``, if the file cannot
            be loaded (truncated, random bytes, Python objects) or does not hold a mapping of
            tensors.
    """
    obj = load_checkpoint(path, what=expected, required_keys=())
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{str(path)!r} does not hold a state dict of tensors; expected {expected}"
        )
    return {k: v for k, v in obj.items() if not k.startswith("fc.")}


class DualStreamResNet(nn.Module):
    """Visible and infrared stems, shared ResNet body, GeM pooling and BN-neck (docs/method.md §3).

    Args:
        depth: ResNet depth: 50 (the reference, 2048-d features) or 18/34 (512-d; CPU tests).
        last_stride: Stride of layer4 (the reference uses 1: a 288×144 input gives 18×9 maps).
        gem_p: Fixed GeM exponent.
        pretrained: ``None`` (torchvision's random init), a path to a torchvision ResNet state
            dict (ImageNet weights, or the SynVI pretrained start the entry points resolve
            ``"synvi"`` to), or ``"torchvision"`` for the local torchvision cache. Loaded into
            both stems and the body; never downloaded.
        non_local: Insert AGW non-local blocks (2 in layer2, 3 in layer3); off in the reference.
        non_local_pairwise: Pairwise function of the non-local blocks (see
            :class:`NonLocalBlock`).
        bn_replicas: R, the ``nn.DataParallel`` replicas whose BatchNorm behaviour is
            reproduced (1: plain BatchNorm over the whole batch). Under DDP with D processes,
            :meth:`set_processes` gives each process R / D of them.

    Attributes:
        feature_dim: Output feature dimension D.
        bn_replicas: R, over all processes.
        local_replicas: Replicas in one forward call of this process (R / D).
        stems: ``ModuleDict`` with keys ``"visible"`` and ``"infrared"``.
        body: layer1-4, shared.
    """

    def __init__(
        self,
        depth: int = DEPTH,
        *,
        last_stride: int = LAST_STRIDE,
        gem_p: float = GEM_P,
        pretrained: str | os.PathLike[str] | None = None,
        non_local: bool = False,
        non_local_pairwise: str = "embedded_gaussian",
        bn_replicas: int = BN_REPLICAS,
    ) -> None:
        super().__init__()
        if isinstance(bn_replicas, bool) or not isinstance(bn_replicas, int) or bn_replicas < 1:
            raise ValueError(
                f"DualStreamResNet: bn_replicas must be an integer >= 1, got {bn_replicas!r}"
            )
        if depth not in DEPTHS:
            raise ValueError(
                f"DualStreamResNet: depth must be one of {sorted(DEPTHS)}, got {depth}"
            )
        if last_stride not in (1, 2):
            raise ValueError(f"DualStreamResNet: last_stride must be 1 or 2, got {last_stride}")
        self.depth = depth
        builder, _ = DEPTHS[depth]
        net: torchvision.models.ResNet = getattr(torchvision.models, builder)(weights=None)
        if pretrained is not None:
            path = resolve_pretrained_path(pretrained, depth)
            expected = f"a torchvision ResNet-{depth} state dict"
            state = load_imagenet_state_dict(path, expected=expected)
            # Files written before BatchNorm counted its batches (the reference's
            # resnet50-19c8e357.pth) lack num_batches_tracked; load_state_dict fills it in.
            own = {
                k: v
                for k, v in net.state_dict().items()
                if not k.startswith("fc.")
                and (k in state or not k.endswith("num_batches_tracked"))
            }
            try:
                # Shapes first: load_state_dict(strict=False) would raise a bare size-mismatch
                # RuntimeError for e.g. ResNet-50 weights, naming neither file nor depth.
                check_state_dict_fits(
                    state, own, path=str(path), hint=f"model.backbone.depth={depth}"
                )
            except CheckpointError as err:
                raise ValueError(
                    f"pretrained weights do not fit torchvision {builder} ({expected} "
                    f"expected): {err}"
                ) from err
            net.load_state_dict(state, strict=False)
            log.info("loaded pretrained weights for both stems and the body from %s", path)
        if last_stride == 1:
            # Only the first block of layer4 strides (main path and downsample); weights are
            # unchanged, the map is twice as large (docs/method.md §3, last_conv_stride=1).
            for module in net.layer4[0].modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)

        def make_stem() -> nn.Sequential:
            return nn.Sequential(
                OrderedDict(
                    conv1=copy.deepcopy(net.conv1),
                    bn1=copy.deepcopy(net.bn1),
                    relu=nn.ReLU(inplace=True),
                    maxpool=copy.deepcopy(net.maxpool),
                )
            )

        self.stems = nn.ModuleDict({"visible": make_stem(), "infrared": make_stem()})
        if pretrained is None:
            # The reference builds a separate ResNet per stem, so untrained stems start from
            # independent draws (torchvision's init rule for conv1).
            conv1 = self.stems["infrared"].get_submodule("conv1")
            assert isinstance(conv1, nn.Conv2d)
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        layers: dict[str, nn.Module] = {
            name: getattr(net, name) for name in ("layer1", "layer2", "layer3", "layer4")
        }
        if non_local:
            for name, count in NON_LOCAL_LAYERS.items():
                layer = layers[name]
                assert isinstance(layer, nn.Sequential)  # torchvision's ResNet stages
                layers[name] = _with_non_local(layer, count, non_local_pairwise)
        self.body = nn.Sequential(OrderedDict(layers))
        self.feature_dim: int = net.fc.in_features
        self.pool = GeM(gem_p)
        self.bnneck = nn.BatchNorm1d(self.feature_dim)
        nn.init.normal_(self.bnneck.weight, 1.0, BNNECK_WEIGHT_STD)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)  # frozen BN-neck bias (docs/method.md §3)
        self.bn_replicas = bn_replicas
        self.local_replicas = bn_replicas
        if bn_replicas > 1:
            convert_replica_batchnorm(self, bn_replicas)

    def set_processes(self, processes: int) -> None:
        """Spread the R virtual replicas over ``processes`` DDP ranks (R / D per rank).

        Raises:
            ValueError: When R is not a multiple of the process count, naming both.
        """
        if processes < 1:
            raise ValueError(f"set_processes: need >= 1 process, got {processes}")
        if self.bn_replicas == 1:
            return  # plain BatchNorm (SyncBatchNorm under DDP when the trainer asks for it)
        if self.bn_replicas % processes:
            raise ValueError(
                f"model.bn_replicas={self.bn_replicas} is not a multiple of the {processes} "
                "training processes (devices x nodes): each process must hold a whole number "
                "of virtual DataParallel replicas"
            )
        self.local_replicas = self.bn_replicas // processes
        set_replicas(self, self.local_replicas)

    def _replica_sizes(self, x_visible: Tensor | None, x_infrared: Tensor | None) -> list[int]:
        """Rows per replica chunk of each given stream.

        Raises:
            ValueError: When a stream's batch does not split into the replicas of this process.
        """
        r = self.local_replicas
        sizes: list[int] = []
        for name, x in (("visible", x_visible), ("infrared", x_infrared)):
            if x is None:
                continue
            if x.shape[0] % r:
                raise ValueError(
                    f"the {name} batch of {x.shape[0]} images does not split into {r} equal "
                    f"DataParallel replica chunks (model.bn_replicas={self.bn_replicas} over "
                    f"{self.bn_replicas // r} process(es)); make each stream's batch per "
                    "process a multiple of the replicas per process"
                )
            sizes.append(x.shape[0] // r)
        return sizes

    def _replica_major(self, maps: list[Tensor], sizes: list[int]) -> Tensor:
        """Concatenate the two streams so that each replica's rows are contiguous.

        DataParallel scatters each input tensor into R contiguous chunks, and replica r runs
        ``cat(visible chunk r, infrared chunk r)`` through the shared body. Laying the rows out
        as ``[v_0, i_0, v_1, i_1, ...]`` lets every replica BatchNorm split its input into R
        contiguous chunks.

        Args:
            maps: The visible and infrared stem outputs, ``(B_v, C, h, w)`` and
                ``(B_i, C, h, w)``.
            sizes: Their rows per replica, ``B_v / R`` and ``B_i / R``.

        Returns:
            ``(B_v + B_i, C, h, w)`` in replica-major order.
        """
        chunks = [m.split(size) for m, size in zip(maps, sizes, strict=True)]
        return torch.cat([c[k] for k in range(self.local_replicas) for c in chunks])

    def forward(
        self, x_visible: Tensor | None = None, x_infrared: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Embed a visible and/or an infrared batch.

        When both are given, the stem outputs are concatenated and the shared body, GeM and
        BN-neck run once over ``B_v + B_i`` images (BN statistics over both modalities, as the
        reference's ``modal=0``), and the result is split back.

        Args:
            x_visible: ``(B_v, 3, H, W)`` images for the visible stem, or ``None``.
            x_infrared: ``(B_i, 3, H, W)`` images for the infrared stem, or ``None``.

        Returns:
            ``(f_visible, f_infrared)``, each ``(B, D)`` fp32 or ``None`` where the input was
            ``None``. Train mode: raw BN-neck outputs ``f(x)``; eval mode: L2-normalised
            ``ẑ(x)`` (docs/method.md §1, §3).

        Raises:
            ValueError: If both inputs are ``None``.
        """
        if x_visible is None and x_infrared is None:
            raise ValueError("DualStreamResNet.forward: give x_visible, x_infrared or both")
        replicated = self.training and self.local_replicas > 1
        # Checked before any layer runs, so that the error names the stream, not a BN layer.
        sizes = self._replica_sizes(x_visible, x_infrared) if replicated else []
        maps: list[Tensor] = []
        if x_visible is not None:
            maps.append(self.stems["visible"](x_visible))
        if x_infrared is not None:
            maps.append(self.stems["infrared"](x_infrared))
        if replicated and len(maps) == 2:
            x = self._replica_major(maps, sizes)
            feat = self.bnneck(self.pool(self.body(x)))
            # Back to stream order: rows [r (n_v + n_i), r (n_v + n_i) + n_v) are visible.
            per_replica = feat.split(sizes[0] + sizes[1])
            f_v = torch.cat([part[: sizes[0]] for part in per_replica])
            f_i = torch.cat([part[sizes[0] :] for part in per_replica])
            return f_v, f_i
        x = maps[0] if len(maps) == 1 else torch.cat(maps)
        feat = self.bnneck(self.pool(self.body(x)))
        if not self.training:
            feat = F.normalize(feat, dim=1)
        if x_visible is None:
            return None, feat
        if x_infrared is None:
            return feat, None
        n_v = x_visible.shape[0]
        return feat[:n_v], feat[n_v:]
