"""GURLitModule: ADC step, memory routing and update order, embed, LR schedule, tiny fits."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gur_lightning.models import DualStreamResNet, GURLitModule

H, W = 32, 16
D = 512

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are trying to `self.log\\(\\)`",
    "ignore:.*does not have many workers.*",
    "ignore:.*GPU available but not used.*",
)


def reference_mean_update(memory, feats, labels, m):
    """Reference CM update: one sample after another, renormalising every time (§6.1)."""
    memory = memory.clone()
    for x, y in zip(F.normalize(feats.float(), dim=1), labels.tolist(), strict=True):
        memory[y] = m * memory[y] + (1 - m) * x
        memory[y] = memory[y] / memory[y].norm()
    return memory


def make_batch(bv: int, bi: int, kv: int, ki: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "visible": {
            "img": torch.randn(bv, 3, H, W, generator=g),
            "img2": torch.randn(bv, 3, H, W, generator=g),
            "label": torch.randint(0, kv, (bv,), generator=g),
            "camid": torch.zeros(bv, dtype=torch.long),
            "index": torch.arange(bv),
        },
        "infrared": {
            "img": torch.randn(bi, 3, H, W, generator=g),
            "label": torch.randint(0, ki, (bi,), generator=g),
            "camid": torch.ones(bi, dtype=torch.long),
            "index": torch.arange(bi),
        },
    }


def make_module(seed: int = 0, **kwargs) -> GURLitModule:
    torch.manual_seed(seed)
    return GURLitModule(DualStreamResNet(18), **kwargs)


def centroids(k: int, seed: int) -> torch.Tensor:
    return torch.randn(k, D, generator=torch.Generator().manual_seed(seed))


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def test_training_step_loss_matches_hand_computation():
    module = make_module(loss_weight_visible=0.5, loss_weight_infrared=2.0, temperature=0.1)
    cv, ci = centroids(3, 1), centroids(4, 2)
    module.set_memories(
        {"visible": cv, "infrared": ci}, {"visible": "visible", "infrared": "infrared"}
    )
    batch = make_batch(3, 4, 3, 4, seed=3)
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
    module.load_state_dict(state)
    v = batch["visible"]
    f_v, f_i = module.backbone(torch.cat([v["img"], v["img2"]]), batch["infrared"]["img"])
    y_v = torch.cat([v["label"], v["label"]])

    def ce(f, c, y):
        s = F.normalize(f, dim=1) @ F.normalize(c, dim=1).t() / 0.1
        return -(s[torch.arange(len(y)), y] - s.logsumexp(1)).mean()

    expected = 0.5 * ce(f_v, cv, y_v) + 2.0 * ce(f_i, ci, batch["infrared"]["label"])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_shared_memory_gradients_use_pre_update_rows_then_visible_first_update():
    module = make_module(seed=1, memory_momentum=0.1)
    c = centroids(3, 4)
    module.set_memories({"shared": c}, {"visible": "shared", "infrared": "shared"})
    m0 = module.memory_tensors()["shared"]
    batch = make_batch(4, 6, 3, 3, seed=5)
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
    loss.backward()
    # Both streams' logits were taken against the untouched memory; backward does not update it.
    assert torch.equal(module.memory_tensors()["shared"], m0)
    module.load_state_dict(state)
    v = batch["visible"]
    with torch.no_grad():
        f_v, f_i = module.backbone(torch.cat([v["img"], v["img2"]]), batch["infrared"]["img"])
        y_v = torch.cat([v["label"], v["label"]])
        y_i = batch["infrared"]["label"]
        s_v = F.normalize(f_v, dim=1) @ m0.t() / 0.05
        s_i = F.normalize(f_i, dim=1) @ m0.t() / 0.05
        expected_loss = F.cross_entropy(s_v, y_v) + F.cross_entropy(s_i, y_i)
    torch.testing.assert_close(loss.detach(), expected_loss, rtol=1e-5, atol=1e-5)
    module.on_train_batch_end(loss, batch, 0)
    after = module.memory_tensors()["shared"]
    visible_first = reference_mean_update(m0, torch.cat([f_v, f_i]), torch.cat([y_v, y_i]), 0.1)
    infrared_first = reference_mean_update(m0, torch.cat([f_i, f_v]), torch.cat([y_i, y_v]), 0.1)
    torch.testing.assert_close(after, visible_first, rtol=0, atol=1e-5)
    assert not torch.allclose(after, infrared_first, atol=1e-3)
    torch.testing.assert_close(after.norm(dim=1), torch.ones(3))


def test_cmlu_routing_trains_visible_samples_against_the_infrared_memory():
    module = make_module(seed=2)
    cv, ci = centroids(3, 6), centroids(5, 7)
    module.set_memories(
        {"visible": cv, "infrared": ci}, {"visible": "infrared", "infrared": "infrared"}
    )
    before = module.memory_tensors()
    batch = make_batch(2, 4, 5, 5, seed=8)
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
    module.on_train_batch_end(loss, batch, 0)
    after = module.memory_tensors()
    assert torch.equal(after["visible"], before["visible"])  # prototypes only, never updated
    changed = (after["infrared"] - before["infrared"]).abs().amax(dim=1) > 0
    used = torch.cat([batch["visible"]["label"], batch["infrared"]["label"]]).unique()
    assert changed.nonzero().flatten().tolist() == used.tolist()


def test_memory_tensors_are_copies_and_set_memories_validates():
    module = make_module(seed=3)
    module.set_memories({"a": centroids(2, 9)}, {"infrared": "a"})
    rows = module.memory_tensors()["a"]
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(2))
    rows.zero_()
    assert module.memory_tensors()["a"].abs().sum() > 0
    with pytest.raises(ValueError, match="not a modality"):
        module.set_memories({"a": centroids(2, 9)}, {"rgb": "a"})
    with pytest.raises(ValueError, match="'visible' -> 'b'"):
        module.set_memories({"a": centroids(2, 9)}, {"visible": "b"})
    with pytest.raises(ValueError, match="D=7"):
        module.set_memories({"a": torch.randn(2, 7)}, {"visible": "a"})
    with pytest.raises(ValueError, match="memory 'a'.*zero"):
        module.set_memories({"a": torch.zeros(2, D)}, {"visible": "a"})
    with pytest.raises(ValueError, match="memory_update|update_mode"):
        make_module(memory_update="median")


def test_batch_with_an_unrouted_modality_is_rejected():
    module = make_module(seed=4)
    module.set_memories({"a": centroids(3, 1)}, {"infrared": "a"})
    with pytest.raises(ValueError, match="no memory is routed"):
        module.training_step(make_batch(2, 2, 3, 3, seed=0), 0)


def test_embed_is_the_flip_average_through_the_right_stem():
    module = make_module(seed=5)
    module.train()
    x = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(10))
    e = module.embed(x, "infrared")
    assert module.training and module.backbone.bnneck.training  # state restored
    assert e.dtype == torch.float32 and e.shape == (4, D)
    module.eval()
    with torch.no_grad():
        z = module.backbone(None, x)[1]
        z_flip = module.backbone(None, torch.flip(x, dims=[3]))[1]
        z_vis = module.backbone(x, None)[0]
    module.train()
    torch.testing.assert_close(e, 0.5 * (z + z_flip))
    assert not torch.allclose(e, z, atol=1e-3)
    torch.testing.assert_close(module.embed(x, 1, flip=False), z)
    torch.testing.assert_close(module.embed(x, "visible", flip=False), z_vis)
    r = module.embed(x, "infrared", renormalize=True)
    torch.testing.assert_close(r, F.normalize(0.5 * (z + z_flip), dim=1))
    assert float(e.norm(dim=1).max()) < 1.0  # mean of two unit vectors, not renormalised


def test_embed_routes_mixed_batches_per_sample_and_restores_eval_state():
    module = make_module(seed=6)
    x = torch.randn(5, 3, H, W, generator=torch.Generator().manual_seed(11))
    codes = torch.tensor([1, 0, 0, 1, 1])
    mixed = module.embed(x, codes)
    vis = module.embed(x[codes == 0], "visible")
    ir = module.embed(x[codes == 1], "infrared")
    torch.testing.assert_close(mixed[codes == 0], vis)
    torch.testing.assert_close(mixed[codes == 1], ir)
    torch.testing.assert_close(module.embed(x, ["infrared", "visible", 0, 1, "infrared"]), mixed)
    module.eval()
    module.embed(x, "visible")
    assert not module.training
    assert module.embed(x[:0], "visible").shape == (0, D)
    with pytest.raises(ValueError, match="0 or 1"):
        module.embed(x, torch.tensor([0, 1, 2, 0, 0]))
    with pytest.raises(ValueError, match="unknown modality"):
        module.embed(x, "thermal")
    with pytest.raises(ValueError, match="3 modality codes for 5"):
        module.embed(x, torch.tensor([0, 1, 0]))


def test_embed_with_channels_last_matches_and_under_bf16_is_fp32():
    ref = make_module(seed=7)
    cl = make_module(seed=7, channels_last=True)
    assert cl.backbone.stems["visible"].conv1.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    x = torch.randn(3, 3, H, W, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(
        cl.embed(x, "visible"), ref.embed(x, "visible"), rtol=1e-4, atol=1e-5
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = cl.embed(x, "infrared")
    assert e.dtype == torch.float32 and e.shape == (3, D)


def test_lr_is_a_step_function_of_the_gur_epoch():
    module = make_module(seed=8, lr=1e-3, lr_step_size=20, lr_gamma=0.1)
    assert module.gur_epoch == 0
    assert [module.lr_at(e) for e in (0, 19, 20, 39, 40)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]
    )
    module.gur_epoch = 25
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    restored = make_module(seed=8)
    restored.on_load_checkpoint(ckpt)
    assert restored.gur_epoch == 25
    with pytest.raises(ValueError, match="non-negative int"):
        module.gur_epoch = -1


class _RecordLR(L.Callback):
    def __init__(self, set_gur_epoch: int | None = None) -> None:
        self.set_gur_epoch = set_gur_epoch
        self.lrs: list[tuple[int, float]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if self.set_gur_epoch is not None:
            pl_module.gur_epoch = self.set_gur_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lrs = {g["lr"] for g in trainer.optimizers[0].param_groups}
        assert len(lrs) == 1
        self.lrs.append((trainer.current_epoch, lrs.pop()))


def _loader(n_batches: int, seed: int) -> DataLoader:
    return DataLoader(
        [make_batch(2, 4, 3, 4, seed + i) for i in range(n_batches)], batch_size=None
    )


def _set_default_memories(module: GURLitModule) -> None:
    module.set_memories(
        {"visible": centroids(3, 20), "infrared": centroids(4, 21)},
        {"visible": "visible", "infrared": "infrared"},
    )


def test_lr_schedule_in_fit_follows_gur_epoch_not_lightning_epoch():
    module = make_module(seed=9, lr=1e-3, lr_step_size=1, lr_gamma=0.5)
    _set_default_memories(module)
    default = _RecordLR()
    quiet_trainer(max_epochs=2, limit_train_batches=1, callbacks=[default]).fit(
        module, _loader(1, 0)
    )
    assert default.lrs == [(0, pytest.approx(1e-3)), (1, pytest.approx(5e-4))]
    module = make_module(seed=9, lr=1e-3, lr_step_size=2, lr_gamma=0.1)
    _set_default_memories(module)
    fixed = _RecordLR(set_gur_epoch=5)  # a later GUR epoch, phase 0 of this run
    quiet_trainer(max_epochs=1, limit_train_batches=1, callbacks=[fixed]).fit(
        module, _loader(1, 0)
    )
    assert fixed.lrs == [(0, pytest.approx(1e-5))]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_tiny_fit_updates_memories_and_keeps_them_unit_fp32(precision):
    module = make_module(seed=10, channels_last=precision == "bf16-mixed")
    _set_default_memories(module)
    before = module.memory_tensors()
    trainer = quiet_trainer(precision=precision)
    trainer.fit(module, _loader(2, 30))
    after = module.memory_tensors()
    for name in ("visible", "infrared"):
        assert after[name].dtype == torch.float32
        assert not torch.equal(after[name], before[name])
        torch.testing.assert_close(after[name].norm(dim=1), torch.ones(len(after[name])))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/loss_visible", "train/loss_infrared", "train/lr"):
        assert key in metrics and torch.isfinite(metrics[key])
    # The optimizer holds exactly the trainable backbone parameters: no memory, no frozen bias.
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert opt_params == trainable
    assert id(module.backbone.bnneck.bias) not in opt_params
    assert not any(k.startswith("_memories") for k in module.state_dict())


def test_fit_without_memories_fails_loudly():
    module = make_module(seed=11)
    with pytest.raises(RuntimeError, match="re-clustering callback configured"):
        quiet_trainer().fit(module, _loader(1, 0))


def test_memory_state_round_trips_through_the_checkpoint_bit_for_bit():
    import io

    from gur_lightning.clustering.policy import Prototypes

    module = make_module(seed=12)
    _set_default_memories(module)
    batch = make_batch(2, 4, 3, 4, seed=40)
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
    module.on_train_batch_end(loss, batch, 0)  # trained rows, not the installed centroids
    module.set_memories(
        {"visible": centroids(3, 22), "infrared": centroids(4, 23)},
        {"visible": "infrared", "infrared": "infrared"},
    )
    trained = {"visible": centroids(3, 24), "infrared": centroids(4, 25)}
    module.keep_prototypes(
        Prototypes(
            cameras={("visible", 2): trained["visible"], ("infrared", 10): trained["infrared"]},
            modalities=dict(trained),
        )
    )
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # tensors and plain data only
    restored = make_module(seed=13)
    restored.on_load_checkpoint(ckpt)
    before, after = module.memory_tensors(), restored.memory_tensors()
    assert before.keys() == after.keys() == {"visible", "infrared"}
    for name in before:  # as saved, not re-normalised
        assert torch.equal(before[name], after[name]), name
    assert restored.routing == {"visible": "infrared", "infrared": "infrared"}
    kept = restored.prototypes
    assert kept.cameras.keys() == {("visible", 2), ("infrared", 10)}
    assert torch.equal(kept.cameras[("infrared", 10)], trained["infrared"])
    assert torch.equal(kept.modalities["visible"], trained["visible"])
    assert not any(k.startswith(("_memories", "_prototypes")) for k in module.state_dict())


class _StartPhase(L.Callback):
    """Play the re-clustering callback's part: start every phase on the module."""

    def __init__(self, trains: bool) -> None:
        self.trains = trains

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.begin_phase(0, trains=self.trains)


def test_a_skipped_phase_runs_its_steps_without_reading_batches_or_training():
    module = make_module(seed=14)  # no memories at all: the first phase was skipped
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError, match="re-clustering callback configured"):
        quiet_trainer(callbacks=[_StartPhase(trains=True)]).fit(module, range(3))
    trainer = quiet_trainer(callbacks=[_StartPhase(trains=False)], limit_train_batches=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "training_step returned None"
        trainer.fit(module, range(3))  # step indices: nothing to look at
    assert trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop.batch_idx == 2
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _SetGurEpochMidPhase(_RecordLR):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 0:
            pl_module.gur_epoch = 2


def test_the_lr_is_written_at_the_phase_start_only():
    # Setting the GUR epoch mid-phase records it; the optimiser's lr changes at the next phase.
    module = make_module(seed=15, lr=1e-3, lr_step_size=2, lr_gamma=0.1)
    _set_default_memories(module)
    record = _SetGurEpochMidPhase()
    quiet_trainer(max_epochs=2, limit_train_batches=2, callbacks=[record]).fit(
        module, _loader(2, 0)
    )
    assert record.lrs == [
        (0, pytest.approx(1e-3)),
        (0, pytest.approx(1e-3)),
        (1, pytest.approx(1e-4)),
        (1, pytest.approx(1e-4)),
    ]
