"""The evaluation stack: protocol-table dispatch, one feature pass, trial averaging, DDP gathering.

References are independent of the code under test: explicitly normalised ``-q.g`` distances fed
to the ranking engine (itself checked against a per-query loop in ``test_functional.py``), that
loop directly, and means and standard deviations written out by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gur_lightning.data.protocols import PROTOCOLS, UnknownProtocolError, get_protocol
from gur_lightning.data.samples import Sample
from gur_lightning.evaluation import (
    METRIC_NAMES,
    average_trials,
    evaluate_splits,
    featurize_once,
    protocol_splits,
)
from gur_lightning.metrics import evaluate_rank
from gur_lightning.utils.distributed import gather_by_index
from tests.metrics.test_functional import loop_eval

NUM_SAMPLES = 40
NUM_QUERY = 16


def make_data(seed: int = 0) -> tuple[list[Sample], list[Sample], torch.Tensor]:
    """SYSU-like: infrared queries (cams 3/6), visible gallery (cams 1/2/4/5), clustered features.

    Returns:
        ``(query, gallery, feats)``: feats (NUM_SAMPLES, 8), unnormalised, queries first.
    """
    gen = torch.Generator().manual_seed(seed)
    pids = torch.randint(0, 5, (NUM_SAMPLES,), generator=gen)
    centres = torch.randn(5, 8, generator=gen)
    feats = centres[pids] + 0.8 * torch.randn(NUM_SAMPLES, 8, generator=gen)
    q_cams = torch.tensor([3, 6])[torch.randint(0, 2, (NUM_SAMPLES,), generator=gen)]
    g_cams = torch.tensor([1, 2, 4, 5])[torch.randint(0, 4, (NUM_SAMPLES,), generator=gen)]
    samples = [
        Sample(f"/x/{i}.jpg", int(pids[i]), int(q_cams[i]), "infrared")
        if i < NUM_QUERY
        else Sample(f"/x/{i}.jpg", int(pids[i]), int(g_cams[i]), "visible")
        for i in range(NUM_SAMPLES)
    ]
    return samples[:NUM_QUERY], samples[NUM_QUERY:], feats


class Featurizer:
    """Looks features up by path (L2-normalised) and records every call."""

    def __init__(self, samples: list[Sample], feats: torch.Tensor) -> None:
        self.table = {s.path: f for s, f in zip(samples, feats, strict=True)}
        self.calls: list[list[str]] = []

    def __call__(self, samples):
        self.calls.append([s.path for s in samples])
        rows = torch.stack([self.table[s.path] for s in samples])
        return torch.nn.functional.normalize(rows, dim=1)


def expected(query, gallery, feats_by_path, rule):
    """Independent path: explicit normalisation, -q.g^T, then the engine."""
    q = torch.stack([feats_by_path[s.path] for s in query])
    g = torch.stack([feats_by_path[s.path] for s in gallery])
    q = q / q.norm(dim=1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True)
    return evaluate_rank(
        (-(q @ g.T)).numpy(),
        [s.pid for s in query],
        [s.pid for s in gallery],
        [s.camid for s in query],
        [s.camid for s in gallery],
        rule,
    )


def check_against(result, prefix, ref):
    for k in (1, 5, 10, 20):
        assert result[f"{prefix}/rank{k}"] == pytest.approx(ref["cmc"][k - 1], abs=1e-6)
    assert result[f"{prefix}/mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    assert result[f"{prefix}/mINP"] == pytest.approx(ref["mINP"], abs=1e-6)


def test_scores_equal_the_engine_on_explicit_cosine_distance():
    query, gallery, feats = make_data()
    featurize = Featurizer(query + gallery, feats)
    result = evaluate_splits({"sysu_all": [(query, gallery)]}, featurize)
    assert set(result) == {
        *(f"test/sysu_all/{m}{s}" for m in METRIC_NAMES for s in ("", "_std")),
        "test/sysu_all/trials",
    }
    assert all(isinstance(v, float) for v in result.values())
    assert result["test/sysu_all/trials"] == 1.0 and result["test/sysu_all/mAP_std"] == 0.0
    check_against(result, "test/sysu_all", expected(query, gallery, featurize.table, "sysu"))
    # The table's rule is what scores: LLCM's removal gives other numbers on the same lists.
    other = expected(query, gallery, featurize.table, "llcm")
    assert other["mAP"] != pytest.approx(result["test/sysu_all/mAP"], abs=1e-6)


def test_one_feature_pass_for_overlapping_trials_and_protocols():
    query, gallery, feats = make_data(1)
    featurize = Featurizer(query + gallery, feats)
    trials = [(query, gallery[:14]), (query, gallery[10:])]
    together = evaluate_splits({"sysu_all": trials, "sysu_indoor": trials[:1]}, featurize)
    # Every image once, in first-listed order: queries, then the gallery as the trials list it.
    assert featurize.calls == [[s.path for s in query + gallery]]
    alone = [evaluate_splits({"sysu_all": [t]}, featurize) for t in trials]
    for metric in METRIC_NAMES:
        values = [a[f"test/sysu_all/{metric}"] for a in alone]
        assert together[f"test/sysu_all/{metric}"] == pytest.approx(np.mean(values), abs=1e-12)
    assert together["test/sysu_indoor/mAP"] == alone[0]["test/sysu_all/mAP"]


def test_padded_shuffled_extraction_gathers_to_the_same_numbers():
    # A padded, interleaved sampler (some samples extracted twice, in any order) is undone by
    # gather_by_index; the numbers equal those of the plain extraction.
    query, gallery, feats = make_data(1)
    samples = query + gallery
    perm = torch.randperm(NUM_SAMPLES, generator=torch.Generator().manual_seed(0))
    rows = torch.cat([perm, perm[:3], perm[-2:]])
    gathered = gather_by_index(feats[rows], rows, NUM_SAMPLES)
    reference = evaluate_splits({"sysu_all": [(query, gallery)]}, Featurizer(samples, feats))
    padded = evaluate_splits({"sysu_all": [(query, gallery)]}, Featurizer(samples, gathered))
    assert padded == reference
    # Guard that duplicates matter: the same features listed as extra gallery images (new
    # paths) do change mAP.
    extra = [Sample(s.path + ".dup", s.pid, s.camid, s.modality) for s in gallery[:6]]
    featurize = Featurizer(samples + extra, torch.cat([feats, feats[NUM_QUERY : NUM_QUERY + 6]]))
    doubled = evaluate_splits({"sysu_all": [(query, gallery + extra)]}, featurize)
    assert doubled["test/sysu_all/mAP"] != reference["test/sysu_all/mAP"]


def test_regdb_protocol_scores_without_removal():
    query, gallery, feats = make_data(2)
    query = [Sample(s.path, s.pid, 2, "infrared") for s in query]
    gallery = [Sample(s.path, s.pid, 1, "visible") for s in gallery[:12]]
    featurize = Featurizer(query + gallery, feats[: NUM_QUERY + 12])
    result = evaluate_splits({"regdb_t2v": [(query, gallery)]}, featurize, prefix="val")
    ref = expected(query, gallery, featurize.table, "regdb")
    check_against(result, "val/regdb_t2v", ref)
    # A gallery of 12 < 20: rank-20 is the padded end of the curve, 1.0.
    assert result["val/regdb_t2v/rank20"] == 1.0


def test_trials_average_to_mean_and_population_std():
    rng = np.random.default_rng(6)
    q_pids, g_pids = rng.integers(0, 6, 20), np.tile(np.arange(6), 5)
    q_cams, g_cams = rng.choice([3, 6], 20), rng.choice([1, 2, 4, 5], 30)
    feats = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((50, 4))), dim=1)
    query = [Sample(f"q{i}", int(q_pids[i]), int(q_cams[i]), "infrared") for i in range(20)]
    gallery = [Sample(f"g{j}", int(g_pids[j]), int(g_cams[j]), "visible") for j in range(30)]
    masks = np.zeros((3, 30), dtype=bool)
    for t in range(3):
        masks[t, t * 6 : (t + 2) * 6] = True
    trials = [(query, [gallery[j] for j in np.flatnonzero(m)]) for m in masks]
    res = evaluate_splits({"sysu_all": trials}, Featurizer(query + gallery, feats))
    dist = (-(feats[:20] @ feats[20:].T)).numpy()
    per = [
        loop_eval(dist[:, m], q_pids, g_pids[m], q_cams, g_cams[m], "sysu", True, 5) for m in masks
    ]
    maps = [p["mAP"] for p in per]
    mean = sum(maps) / 3
    assert res["test/sysu_all/mAP"] == pytest.approx(mean, abs=1e-12)
    assert res["test/sysu_all/mAP_std"] == pytest.approx(
        (sum((x - mean) ** 2 for x in maps) / 3) ** 0.5, abs=1e-12
    )
    assert res["test/sysu_all/rank5"] == pytest.approx(sum(p["cmc"][4] for p in per) / 3)
    assert res["test/sysu_all/trials"] == 3.0
    # average_trials by hand: mean and ddof-0 deviation of two rows.
    rows = [dict.fromkeys(METRIC_NAMES, 0.25), dict.fromkeys(METRIC_NAMES, 0.75)]
    averaged = average_trials(rows)
    assert averaged["mAP"] == 0.5 and averaged["mAP_std"] == 0.25 and averaged["trials"] == 2.0
    # A trial whose gallery is empty, and a protocol without trials, are named.
    with pytest.raises(ValueError, match="gallery is empty"):
        evaluate_splits({"sysu_all": [trials[0], (query, [])]}, Featurizer(query + gallery, feats))
    with pytest.raises(ValueError, match="protocol 'sysu_all': no trial"):
        evaluate_splits({"sysu_all": []}, Featurizer(query + gallery, feats))


def test_errors_are_clear():
    query, gallery, feats = make_data()
    featurize = Featurizer(query + gallery, feats)
    # Unknown protocol names: no fallback, the known ones are listed (before any extraction).
    with pytest.raises(UnknownProtocolError, match=r"unknown evaluation protocol 'cuhk_all'") as e:
        evaluate_splits({"cuhk_all": [(query, gallery)]}, featurize)
    assert "sysu_all" in str(e.value) and "within_visible" in str(e.value)
    assert featurize.calls == []
    with pytest.raises(UnknownProtocolError, match="'sysu_al'; known protocols: sysu_all"):
        get_protocol("sysu_al")
    with pytest.raises(ValueError, match="query set is empty"):
        evaluate_splits({"sysu_all": [([], gallery)]}, featurize)
    # One image listed with two identities.
    clash = [Sample(query[0].path, query[0].pid + 1, query[0].camid, "infrared")]
    with pytest.raises(ValueError, match=r"sample '/x/0.jpg' is listed as"):
        featurize_once(featurize, [query, clash])


class _Sysu:
    """A data set whose split builders record their calls."""

    name = "sysu"

    def __init__(self, query, gallery) -> None:
        self.query, self.gallery, self.calls = query, gallery, []

    def test_split(self, mode="all", trial=None):
        self.calls.append((mode, trial))
        return self.query, self.gallery


def test_protocol_splits_follow_the_table():
    query, gallery, _ = make_data()
    ds = _Sysu(query, gallery)
    splits = protocol_splits(ds, max_trials=3)
    assert list(splits) == ["sysu_all", "sysu_indoor"]
    assert ds.calls == [("all", t) for t in range(3)] + [("indoor", t) for t in range(3)]
    assert len(protocol_splits(ds)["sysu_all"]) == 10  # ten gallery seeds (docs/method.md §13.2)
    assert list(protocol_splits(ds, ["sysu_indoor"], max_trials=1)) == ["sysu_indoor"]
    with pytest.raises(UnknownProtocolError, match="'regdb_x'"):
        protocol_splits(ds, ["regdb_x"])
    with pytest.raises(ValueError, match="max_trials"):
        protocol_splits(ds, max_trials=0)
    # The table's modalities are checked: a visible query in an infrared-query protocol.
    ds.query = [Sample("/v.jpg", 1, 1, "visible")]
    with pytest.raises(ValueError, match="'sysu_all': the query holds \\['visible'\\]"):
        protocol_splits(ds, max_trials=1)
    ds.name = "market"
    with pytest.raises(UnknownProtocolError, match="data set 'market'.*covers llcm, regdb, sysu"):
        protocol_splits(ds)


def test_every_official_protocol_names_a_split_builder_rule_and_draw():
    official = {n: p for n, p in PROTOCOLS.items() if p.kind == "official"}
    assert list(official) == [
        "sysu_all",
        "sysu_indoor",
        "regdb_v2t",
        "regdb_t2v",
        "llcm_v2i",
        "llcm_i2v",
    ]
    for name, p in official.items():
        assert p.dataset == name.split("_")[0] and p.rule.name == p.dataset
        assert {p.query_modality, p.gallery_modality} == {"visible", "infrared"}
    assert PROTOCOLS["regdb_v2t"].trials == "loaded_split"
    assert PROTOCOLS["sysu_all"].trials == PROTOCOLS["llcm_i2v"].trials == "gallery_seeds"
    assert PROTOCOLS["holdout"].rule.removal == "none" and PROTOCOLS["holdout"].trials == "once"


# --------------------------------------------------------------------------------------------
# DDP: two gloo processes, each extracting its shard plus one sample of the other shard (as
# padding does), gather by index and score: the single-process numbers on both ranks.
# --------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world_size: int, store_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.path.join(store_dir, 'store')}",
        rank=rank,
        world_size=world_size,
    )
    try:
        query, gallery, feats = make_data(4)
        rows = torch.arange(rank, NUM_SAMPLES, world_size)  # interleaved, like the sampler
        rows = torch.cat([rows, torch.tensor([1 - rank])]) if rank == 1 else rows
        full = gather_by_index(feats[rows], rows, NUM_SAMPLES)
        result = evaluate_splits(
            {"sysu_all": [(query, gallery)]}, Featurizer(query + gallery, full)
        )
        torch.save(result, os.path.join(store_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_gloo_equals_single_process(tmp_path: Path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    query, gallery, feats = make_data(4)
    expected_result = evaluate_splits(
        {"sysu_all": [(query, gallery)]}, Featurizer(query + gallery, feats)
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got == expected_result, rank
