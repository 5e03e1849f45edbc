"""DualStreamResNet: stems, shared body, GeM, BN-neck, pretrained loading (docs/method.md §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from gur_lightning.models.backbone import DualStreamResNet, GeM, NonLocalBlock

H, W = 64, 32


@pytest.fixture(scope="module")
def net() -> DualStreamResNet:
    torch.manual_seed(0)
    return DualStreamResNet(18)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(seed))


def test_gem_matches_formula_and_is_fp32():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    expected = (x.pow(3).mean(dim=(2, 3)) + 1e-12).pow(1 / 3)
    torch.testing.assert_close(GeM()(x.bfloat16()), expected.float(), rtol=2e-2, atol=0)
    torch.testing.assert_close(GeM()(x.float()), expected.float())
    assert GeM()(x.bfloat16()).dtype == torch.float32
    # A constant map pools to the constant; an all-zero map to eps^(1/3), not NaN.
    assert float(GeM()(torch.full((1, 1, 2, 2), 0.5))[0, 0]) == pytest.approx(0.5)
    assert float(GeM()(torch.zeros(1, 1, 2, 2))[0, 0]) == pytest.approx(1e-4)


def test_shapes_feature_dim_and_last_stride(net):
    assert net.feature_dim == 512
    stem_out = net.stems["visible"](images(2, 0))
    assert net.body(stem_out).shape == (2, 512, H // 16, W // 16)  # last stride 1: /16
    s2 = DualStreamResNet(18, last_stride=2)
    assert s2.body(s2.stems["visible"](images(2, 0))).shape == (2, 512, H // 32, W // 32)
    assert DualStreamResNet(50).feature_dim == 2048


def test_bnneck_init_and_frozen_bias(net):
    fresh = DualStreamResNet(18)
    assert not fresh.bnneck.bias.requires_grad
    assert torch.equal(fresh.bnneck.bias, torch.zeros(512))
    assert abs(float(fresh.bnneck.weight.detach().mean()) - 1.0) < 0.005
    assert 0.005 < float(fresh.bnneck.weight.detach().std()) < 0.02


def test_train_mode_raw_eval_mode_normalised(net):
    net.train()
    f_v, f_i = net(images(3, 1), images(4, 2))
    assert f_v.shape == (3, 512) and f_i.shape == (4, 512)
    assert not torch.allclose(f_v.norm(dim=1), torch.ones(3), atol=1e-2)
    net.eval()
    f_v, f_i = net(images(3, 1), None)
    assert f_i is None
    torch.testing.assert_close(f_v.norm(dim=1), torch.ones(3))
    net.train()


def test_joint_forward_runs_the_body_once_over_both_modalities(net):
    # Train mode: BN statistics are shared by the visible and infrared images (reference modal=0).
    xv, xi = images(3, 3), images(5, 4)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    f_v, f_i = net(xv, xi)
    net.load_state_dict(state)  # undo the running-stat update
    maps = torch.cat([net.stems["visible"](xv), net.stems["infrared"](xi)])
    joint = net.bnneck(net.pool(net.body(maps)))
    net.load_state_dict(state)
    torch.testing.assert_close(torch.cat([f_v, f_i]), joint)
    separate_v, _ = net(xv, None)
    net.load_state_dict(state)
    assert not torch.allclose(separate_v, f_v, atol=1e-3)  # so the test above can fail
    # Eval mode: running statistics, so joint and separate calls agree.
    net.eval()
    j_v, j_i = net(xv, xi)
    torch.testing.assert_close(j_v, net(xv, None)[0])
    torch.testing.assert_close(j_i, net(None, xi)[1])
    net.train()


def test_stem_routing_by_modality():
    torch.manual_seed(1)
    model = DualStreamResNet(18).eval()
    x = images(2, 5)
    v0, i0 = model(x, x)
    assert not torch.allclose(v0, i0, atol=1e-3)  # independent stems
    with torch.no_grad():
        model.stems["visible"].conv1.weight.add_(0.5)
    v1, i1 = model(x, x)
    assert not torch.allclose(v1, v0, atol=1e-3)
    torch.testing.assert_close(i1, i0)
    with torch.no_grad():
        model.stems["infrared"].bn1.bias.add_(0.5)
    v2, i2 = model(x, x)
    torch.testing.assert_close(v2, v1)
    assert not torch.allclose(i2, i1, atol=1e-3)


def test_forward_requires_an_input(net):
    with pytest.raises(ValueError, match="x_visible, x_infrared or both"):
        net(None, None)


def test_bf16_autocast_shapes_and_dtypes(net):
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f_v, f_i = net(images(2, 6), images(3, 7))
    assert f_v.dtype == torch.float32 and f_i.dtype == torch.float32
    assert f_v.shape == (2, 512) and f_i.shape == (3, 512)
    assert torch.isfinite(f_v).all() and torch.isfinite(f_i).all()


def test_channels_last_gives_the_same_features(net):
    net.eval()
    x = images(2, 8)
    ref, _ = net(x, None)
    cl = DualStreamResNet(18)
    cl.load_state_dict(net.state_dict())
    cl.to(memory_format=torch.channels_last).eval()
    out, _ = cl(x.contiguous(memory_format=torch.channels_last), None)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(2)
    tv = torchvision.models.resnet18(weights=None)
    state = tv.state_dict()
    assert "fc.weight" in state  # the file carries the ImageNet classifier, which is dropped
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    net = DualStreamResNet(18, pretrained=str(path))
    for stem in ("visible", "infrared"):
        assert torch.equal(net.stems[stem].conv1.weight, state["conv1.weight"])
        assert torch.equal(net.stems[stem].bn1.running_var, state["bn1.running_var"])
    assert torch.equal(net.body.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(
        net.body.layer4[0].downsample[0].weight, state["layer4.0.downsample.0.weight"]
    )
    assert net.body.layer4[0].conv1.stride == (1, 1)
    assert not any(k.startswith("fc") for k in net.state_dict())


def test_missing_pretrained_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50-19c8e357.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet50-19c8e357.pth"):
        DualStreamResNet(18, pretrained=str(missing))


def test_wrong_architecture_weights_are_a_clear_error(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit torchvision resnet18"):
        DualStreamResNet(18, pretrained=str(path))


def test_torchvision_cache_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match=str(expected)):
        DualStreamResNet(18, pretrained="torchvision")
    expected.parent.mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, expected)
    net = DualStreamResNet(18, pretrained="torchvision")
    assert torch.equal(net.stems["infrared"].conv1.weight, state["conv1.weight"])


def test_non_local_blocks_are_identity_at_init_and_placed_in_layer2_3():
    torch.manual_seed(4)
    nl = DualStreamResNet(18, non_local=True)
    blocks = {
        name: sum(isinstance(m, NonLocalBlock) for m in getattr(nl.body, name).modules())
        for name in ("layer1", "layer2", "layer3", "layer4")
    }
    # AGW: 2 in layer2, 3 in layer3 (clipped to the 2 residual blocks ResNet-18 has there).
    assert blocks == {"layer1": 0, "layer2": 2, "layer3": 2, "layer4": 0}
    assert not any(isinstance(m, NonLocalBlock) for m in DualStreamResNet(18).modules())
    block = NonLocalBlock(8).eval()
    x = torch.randn(2, 8, 3, 4)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("pairwise", ["embedded_gaussian", "dot_product"])
def test_non_local_block_matches_explicit_formula(pairwise):
    torch.manual_seed(5)
    block = NonLocalBlock(6, pairwise=pairwise).eval()
    with torch.no_grad():
        block.W[1].weight.fill_(1.5)
        block.W[1].bias.fill_(0.1)
    x = torch.randn(1, 6, 2, 3)
    n = 6
    flat = x.reshape(6, n)  # (C, N)

    def conv(c: torch.nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
        return c.weight[:, :, 0, 0] @ v + c.bias[:, None]

    theta, phi, g = conv(block.theta, flat), conv(block.phi, flat), conv(block.g, flat)
    f = theta.t() @ phi  # (N, N)
    a = F.softmax(f, dim=1) if pairwise == "embedded_gaussian" else f / n
    y = (a @ g.t()).t()  # (C', N)
    wy = conv(block.W[0], y)
    bn = block.W[1]
    z = (wy - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
    expected = flat + 1.5 * z + 0.1
    torch.testing.assert_close(block(x).reshape(6, n), expected, rtol=1e-5, atol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="depth"):
        DualStreamResNet(101)
    with pytest.raises(ValueError, match="last_stride"):
        DualStreamResNet(18, last_stride=3)
    with pytest.raises(ValueError, match="pairwise"):
        NonLocalBlock(4, pairwise="gaussian")
