"""Tests for the vectorised ranking metrics against hand-computed cases and a per-query loop."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from gur_lightning.metrics import (
    cosine_distance,
    evaluate_llcm,
    evaluate_rank,
    evaluate_regdb,
    evaluate_sysu,
)
from gur_lightning.metrics.functional import stable_argsort_rows

# --------------------------------------------------------------------------------------------
# Independent reference: a literal per-query port of the official loops (eval_sysu,
# eval_regdb, DEEN eval_llcm), including the de-duplicated-CMC quirk (rows of every query are
# summed, the divisor counts valid queries only). Stable sort, so ties are ranked identically.
# --------------------------------------------------------------------------------------------


def loop_eval(distmat, q_pids, g_pids, q_cams, g_cams, removal, dedup, max_rank):
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred = g_pids[indices]
    matches_all = (pred == q_pids[:, None]).astype(np.int32)
    new_rows, std_rows, aps, inps = [], [], [], []
    num_valid = 0
    for i in range(num_q):
        order = indices[i]
        if removal == "sysu":
            remove = (q_cams[i] == 3) & (g_cams[order] == 2)
        elif removal == "same_pid_same_cam":
            remove = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        else:
            remove = np.zeros(num_g, dtype=bool)
        keep = ~remove
        kept = pred[i][keep]
        first_idx = np.unique(kept, return_index=True)[1]
        uniq_list = np.array([kept[j] for j in sorted(first_idx)])
        new_rows.append((uniq_list == q_pids[i]).astype(np.int32).cumsum()[:max_rank])
        raw = matches_all[i][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.max(np.where(raw == 1))
        inps.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        std_rows.append(cmc[:max_rank])
        num_valid += 1
        prec = np.asarray([x / (k + 1.0) for k, x in enumerate(raw.cumsum())]) * raw
        aps.append(prec.sum() / raw.sum())
    rows = new_rows if dedup else std_rows
    # The official code breaks on ragged rows (lists shorter than max_rank): callers pick a
    # max_rank within every list.
    assert len({len(r) for r in rows}) == 1, "loop_eval: max_rank exceeds a ranked list"
    curve = np.asarray(rows, dtype=np.float64).sum(axis=0) / num_valid
    return {"cmc": curve, "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


PROTOCOL_RULES = {
    "sysu": ("sysu", True),
    "regdb": ("none", False),
    "llcm": ("same_pid_same_cam", True),
    "market": ("same_pid_same_cam", False),
}


def assert_close(res, ref, atol=1e-12):
    np.testing.assert_allclose(res["cmc"], ref["cmc"], rtol=0, atol=atol)
    assert res["mAP"] == pytest.approx(ref["mAP"], abs=atol)
    assert res["mINP"] == pytest.approx(ref["mINP"], abs=atol)


# --------------------------------------------------------------------------------------------
# Hand-computed case. Gallery (index: pid, cam):
#   0: 1,c2  1: 2,c1  2: 1,c1  3: 3,c4  4: 2,c2  5: 1,c5  6: 4,c2
# --------------------------------------------------------------------------------------------

G_PIDS = np.array([1, 2, 1, 3, 2, 1, 4])
G_CAMS = np.array([2, 1, 1, 4, 2, 5, 2])
ASC = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
DESC = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.7]
MIXED = [0.5, 0.4, 0.3, 0.6, 0.2, 0.1, 0.7]
DIST = np.array([ASC, DESC, MIXED, ASC])
Q_PIDS = np.array([1, 2, 3, 4])
Q_CAMS = np.array([3, 6, 3, 3])


def test_sysu_hand_case_camera3_removal_and_dedup_cmc():
    # q0 (pid 1, cam 3): items 0, 4, 6 (cam 2) dropped; kept pids [2, 1, 3, 1]; hits at kept
    #   positions 1, 3: AP = (1/2 + 2/4) / 2 = 1/2, INP = 2/4; distinct list [2, 1, 3] -> rank 1.
    # q1 (pid 2, cam 6): nothing dropped; ranked pids [1, 2, 3, 1, 2, 1, 4]; hits at 1, 4:
    #   AP = (1/2 + 2/5) / 2 = 9/20, INP = 2/5; distinct list [1, 2, 3, 4] -> rank 1.
    # q2 (pid 3, cam 3): ranked items 5,4,2,1,0,3,6 -> kept 5,2,1,3 = pids [1, 1, 2, 3]; hit at
    #   kept position 3: AP = INP = 1/4; distinct list [1, 2, 3] -> rank 2 (standard CMC: 3).
    # q3 (pid 4, cam 3): its only gallery image is camera 2 -> no valid match, skipped.
    res = evaluate_sysu(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    np.testing.assert_allclose(res["cmc"], [0, 2 / 3, 1, 1, 1], atol=1e-15)
    assert res["mAP"] == pytest.approx((0.5 + 0.45 + 0.25) / 3, abs=1e-15)
    assert res["mINP"] == pytest.approx((0.5 + 0.4 + 0.25) / 3, abs=1e-15)
    full = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, "sysu", max_rank=5)
    assert full["valid"].tolist() == [True, True, True, False]
    assert full["cmc_rank"].tolist() == [1, 1, 2, -1]
    np.testing.assert_allclose(full["AP"][:3], [0.5, 0.45, 0.25])
    assert np.isnan(full["AP"][3]) and np.isnan(full["INP"][3])
    assert set(res) == {"cmc", "mAP", "mINP"}


def test_sysu_invalid_query_quirk_equals_skipping():
    # The official code sums the (all-zero) de-duplicated rows of invalid queries but divides
    # by the valid count only: same numbers as leaving the query out.
    with_invalid = evaluate_sysu(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    without = evaluate_sysu(DIST[:3], Q_PIDS[:3], G_PIDS, Q_CAMS[:3], G_CAMS, max_rank=5)
    assert_close(with_invalid, without, atol=0)
    # q0's distinct list has 3 entries, so the literal loop can only go to rank 3.
    ref = loop_eval(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, "sysu", True, 3)
    assert_close(with_invalid, {**ref, "cmc": np.r_[ref["cmc"], 1.0, 1.0]})


def test_regdb_hand_case_standard_cmc_no_removal():
    # No removal: q0 hits at 0, 2, 5 -> AP = (1 + 2/3 + 3/6) / 3, INP = 3/6, first hit 0.
    # q1 hits at 1, 4 -> AP 9/20, INP 2/5. q2 (ranked 5,4,2,1,0,3,6) hit at 5 -> 1/6, 1/6.
    # q3 (pid 4) hit at 6 -> 1/7, 1/7 (valid here: RegDB drops nothing).
    res = evaluate_regdb(DIST, Q_PIDS, G_PIDS, max_rank=5)
    aps = [(Fraction(1) + Fraction(2, 3) + Fraction(1, 2)) / 3, Fraction(9, 20)]
    aps += [Fraction(1, 6), Fraction(1, 7)]
    inps = [Fraction(1, 2), Fraction(2, 5), Fraction(1, 6), Fraction(1, 7)]
    np.testing.assert_allclose(res["cmc"], [0.25, 0.5, 0.5, 0.5, 0.5], atol=1e-15)
    assert res["mAP"] == pytest.approx(float(sum(aps) / 4), abs=1e-15)
    assert res["mINP"] == pytest.approx(float(sum(inps) / 4), abs=1e-15)


def test_llcm_hand_case_same_pid_same_camera_removal():
    # q0 (pid 1, cam 1): only item 2 (pid 1, cam 1) is dropped; kept pids [1, 2, 3, 2, 1, 4];
    #   hits at 0, 4 -> AP = (1 + 2/5) / 2 = 0.7, INP = 2/5; distinct list rank 0.
    # q1 (pid 3, cam 4): its only image (item 3, cam 4) is dropped -> invalid.
    # q2 (pid 2, cam 1, MIXED): item 1 dropped; ranked 5,4,2,0,3,6 -> pids [1, 2, 1, 1, 3, 4];
    #   hit at 1 -> AP = 1/2, INP = 1/2; distinct list [1, 2, ...] -> rank 1.
    dist = np.array([ASC, ASC, MIXED])
    res = evaluate_llcm(dist, [1, 3, 2], G_PIDS, [1, 4, 1], G_CAMS, max_rank=3)
    np.testing.assert_allclose(res["cmc"], [0.5, 1, 1], atol=1e-15)
    assert res["mAP"] == pytest.approx((0.7 + 0.5) / 2, abs=1e-15)
    assert res["mINP"] == pytest.approx((0.4 + 0.5) / 2, abs=1e-15)


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_RULES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_matrices_equal_per_query_loop(protocol, seed):
    rng = np.random.default_rng(seed)
    num_q, num_g, num_ids = 37, 61, 9
    q_pids = rng.integers(0, num_ids + 2, num_q)  # some identities absent from the gallery
    g_pids = rng.integers(0, num_ids, num_g)
    q_cams = rng.choice([3, 6], num_q) if protocol == "sysu" else rng.integers(1, 4, num_q)
    g_cams = rng.choice([1, 2, 4, 5], num_g) if protocol == "sysu" else rng.integers(1, 4, num_g)
    # Seed 2 uses integer distances: many exact ties, so the stable tie order is exercised.
    if seed == 2:
        dist = rng.integers(0, 5, (num_q, num_g)).astype(np.float32)
    else:
        dist = rng.standard_normal((num_q, num_g)).astype(np.float32)
    removal, dedup = PROTOCOL_RULES[protocol]
    # max_rank 6 stays within every (de-duplicated) list: each identity has ~7 images here.
    ref = loop_eval(dist, q_pids, g_pids, q_cams, g_cams, removal, dedup, 6)
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, protocol, 6, chunk_size=8)
    assert_close(res, ref)


def test_sysu_sized_random_case_equals_loop_and_chunking_is_invisible():
    rng = np.random.default_rng(5)
    q_pids, g_pids = rng.integers(0, 20, 150), rng.integers(0, 20, 240)
    q_cams, g_cams = rng.choice([3, 6], 150), rng.choice([1, 2, 4, 5], 240)
    dist = rng.standard_normal((150, 240))
    ref = loop_eval(dist, q_pids, g_pids, q_cams, g_cams, "sysu", True, 20)
    one = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, "sysu", chunk_size=150)
    many = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, "sysu", chunk_size=7)
    assert_close(one, ref)
    for key in ("cmc", "AP", "INP", "cmc_rank", "valid"):
        np.testing.assert_array_equal(one[key], many[key])


def test_torch_inputs_equal_numpy_inputs():
    rng = np.random.default_rng(3)
    dist = rng.standard_normal((12, 30))
    q_pids, g_pids = rng.integers(0, 5, 12), rng.integers(0, 5, 30)
    q_cams, g_cams = rng.choice([3, 6], 12), rng.choice([1, 2, 4, 5], 30)
    a = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    b = evaluate_sysu(*(torch.from_numpy(x) for x in (dist, q_pids, g_pids, q_cams, g_cams)))
    assert_close(a, b, atol=0)
    assert isinstance(b["mAP"], float) and b["cmc"].shape == (20,)


def test_max_rank_beyond_gallery_is_padded_with_last_value(caplog):
    # G = 7 < max_rank = 10: the official code would shorten the curve to 7 entries.
    res = evaluate_regdb(DIST, Q_PIDS, G_PIDS, max_rank=10)
    ref = loop_eval(DIST, Q_PIDS, G_PIDS, None, None, "none", False, 7)
    np.testing.assert_allclose(res["cmc"][:7], ref["cmc"], atol=1e-15)
    np.testing.assert_array_equal(res["cmc"][7:], [1.0, 1.0, 1.0])
    assert "exceeds the gallery size" in caplog.text


def test_dedup_list_shorter_than_max_rank():
    # 30 gallery images of 3 identities: the distinct-identity list has 3 entries < max_rank.
    rng = np.random.default_rng(4)
    g_pids, q_pids = np.repeat([0, 1, 2], 10), rng.integers(0, 3, 8)
    g_cams, q_cams = rng.choice([1, 2, 4, 5], 30), rng.choice([3, 6], 8)
    dist = rng.standard_normal((8, 30))
    res = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    ref = loop_eval(dist, q_pids, g_pids, q_cams, g_cams, "sysu", True, 3)
    np.testing.assert_allclose(res["cmc"][:3], ref["cmc"], atol=1e-15)
    np.testing.assert_array_equal(res["cmc"][3:], np.ones(17))
    assert res["cmc"].shape == (20,)


def test_empty_gallery_raises():
    with pytest.raises(ValueError, match="gallery is empty"):
        evaluate_sysu(np.zeros((3, 0)), [1, 2, 3], [], [3, 3, 3], [])


def test_empty_query_raises():
    with pytest.raises(ValueError, match="query set is empty"):
        evaluate_regdb(np.zeros((0, 3)), [], [1, 2, 3])


def test_no_valid_query_raises():
    # The only gallery image of identity 4 is camera 2 and the query is camera 3.
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_sysu(DIST[3:], Q_PIDS[3:], G_PIDS, Q_CAMS[3:], G_CAMS)
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_regdb(DIST, [9, 9, 9, 9], G_PIDS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distmat": np.array([[np.nan] * 7] * 4)}, "NaN"),
        ({"distmat": np.zeros(7)}, "2-D"),
        ({"q_pids": np.array([1, 2, 3])}, "q_pids: expected a 1-D array of 4"),
        ({"g_pids": np.array([0.5] * 7)}, "g_pids: expected integer labels"),
        ({"q_camids": None}, "q_camids and g_camids are required"),
        ({"rule": "viper"}, "unknown 'viper'"),
        ({"max_rank": 0}, "max_rank"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = {
        "distmat": DIST,
        "q_pids": Q_PIDS,
        "g_pids": G_PIDS,
        "q_camids": Q_CAMS,
        "g_camids": G_CAMS,
        "rule": "sysu",
        "max_rank": 5,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_rank(**args)


def test_stable_argsort_rows_matches_numpy_stable_with_ties_and_signed_zeros():
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 4, (50, 40)).astype(np.float64)
    dist[0, :4] = [0.0, -0.0, 0.0, -0.0]
    dist[1] = rng.standard_normal(40)  # a row without ties
    expected = np.argsort(dist, axis=1, kind="stable")
    np.testing.assert_array_equal(stable_argsort_rows(dist), expected)
    np.testing.assert_array_equal(stable_argsort_rows(dist.astype(np.float32)), expected)


def test_cosine_distance_hand_case():
    q = torch.tensor([[3.0, 4.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(cosine_distance(q, g), torch.tensor([[-0.6, -0.8]]))
    raw = cosine_distance(q, g, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[-3.0, -8.0]]))
    with pytest.raises(ValueError, match="feature sizes differ"):
        cosine_distance(q, torch.zeros(2, 3))


def test_benchmark_smoke_reports_identical(capsys):
    from gur_lightning.bench import metrics as bench

    argv = ["--protocol", "sysu", "--num-query", "60", "--num-gallery", "80", "--num-ids", "30"]
    record = bench.main([*argv, "--repeats", "1"])
    assert record["identical"] is True and record["max_abs_diff"] <= 1e-6
    assert json.loads(capsys.readouterr().out.strip()) == record
