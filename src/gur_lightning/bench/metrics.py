"""Benchmark: vectorised ranking metrics vs a straightforward per-query loop.

The loop below ports the reference algorithm (the official ``eval_sysu`` / ``eval_regdb``,
docs/method.md §13.2/§13.3) one query at a time, with a stable sort so that both sides rank ties
identically. The SYSU case uses a 3,803 x 3,010 matrix (all SYSU queries against the ten
single-shot trial galleries stacked), the RegDB case 2,060 x 2,060. Distances come from
synthetic identity-clustered features, so the rankings are neither trivial nor random.

Run: ``python -m gur_lightning.bench metrics --protocol sysu``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from gur_lightning.metrics.functional import (
    DEFAULT_MAX_RANK,
    SYSU_REMOVAL_GALLERY_CAM,
    SYSU_REMOVAL_QUERY_CAM,
    evaluate_rank,
)

DEFAULT_ARGS: list[list[str]] = [["--protocol", "sysu"], ["--protocol", "regdb"]]

SIZES = {"sysu": (3803, 3010, 96), "regdb": (2060, 2060, 206)}
"""(queries, gallery, identities): SYSU all-search test set (3,803 IR queries, 301 single-shot
gallery images x 10 trials, 96 ids) and one RegDB trial (2,060 images per modality, 206 ids)."""

SYSU_QUERY_CAMS = (3, 6)
SYSU_GALLERY_CAMS = (1, 2, 4, 5)
TOLERANCE = 1e-6
"""Results must agree with the reference to 1e-6."""


def reference_loop(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray | None,
    g_camids: np.ndarray | None,
    dedup_cmc: bool,
    max_rank: int = DEFAULT_MAX_RANK,
) -> dict[str, Any]:
    """Per-query port of the official evaluation loop (docs/method.md §13.2/§13.3).

    Args:
        distmat: (Q, G) distances.
        q_pids: (Q,) query identities.
        g_pids: (G,) gallery identities.
        q_camids: (Q,) query cameras, or None for RegDB (nothing is removed).
        g_camids: (G,) gallery cameras, or None.
        dedup_cmc: SYSU's identity-de-duplicated CMC (True) or the standard CMC (False).
        max_rank: CMC length (assumed <= every ranked list length here).

    Returns:
        ``{"cmc", "mAP", "mINP"}``.
    """
    indices = np.argsort(distmat, axis=1, kind="stable")
    pred = g_pids[indices]
    cmc_rows, aps, inps = [], [], []
    num_valid = 0
    for i in range(distmat.shape[0]):
        order = indices[i]
        if q_camids is None or g_camids is None:
            keep = np.ones(order.shape[0], dtype=bool)
        else:
            keep = ~(
                (q_camids[i] == SYSU_REMOVAL_QUERY_CAM)
                & (g_camids[order] == SYSU_REMOVAL_GALLERY_CAM)
            )
        ranked = pred[i][keep]
        matches = (ranked == q_pids[i]).astype(np.int32)
        if dedup_cmc:
            first_idx = np.unique(ranked, return_index=True)[1]
            unique_ranked = np.array([ranked[j] for j in sorted(first_idx)])
            cmc_rows.append((unique_ranked == q_pids[i]).astype(np.int32).cumsum()[:max_rank])
        if not matches.any():
            continue
        cum = matches.cumsum()
        last = int(np.max(np.where(matches == 1)))
        inps.append(cum[last] / (last + 1.0))
        if not dedup_cmc:
            clipped = cum.copy()
            clipped[clipped > 1] = 1
            cmc_rows.append(clipped[:max_rank])
        num_valid += 1
        precisions = np.asarray([x / (k + 1.0) for k, x in enumerate(cum)]) * matches
        aps.append(precisions.sum() / matches.sum())
    cmc = np.asarray(cmc_rows, dtype=np.float64).sum(axis=0) / num_valid
    return {"cmc": cmc, "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def make_case(
    protocol: str, num_q: int, num_g: int, num_ids: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic identity-clustered features and their negated-cosine distance matrix.

    Returns:
        ``(distmat (Q, G) float32, q_pids, g_pids, q_cams, g_cams)``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim))
    q_pids = rng.integers(0, num_ids, num_q)
    # Every identity appears in the gallery at least once, as in the real test sets.
    g_pids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_g - num_ids)])
    rng.shuffle(g_pids)
    qf = centres[q_pids] + noise * rng.standard_normal((num_q, dim))
    gf = centres[g_pids] + noise * rng.standard_normal((num_g, dim))
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    distmat = -(qf @ gf.T).astype(np.float32)
    if protocol == "sysu":
        q_cams = rng.choice(SYSU_QUERY_CAMS, num_q)
        g_cams = rng.choice(SYSU_GALLERY_CAMS, num_g)
    else:
        q_cams, g_cams = np.ones(num_q, np.int64), np.full(num_g, 2, np.int64)
    return distmat, q_pids, g_pids, q_cams, g_cams


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time vectorised vs loop evaluation, print one JSON line and return it."""
    parser = argparse.ArgumentParser(prog="gur_lightning.bench metrics")
    parser.add_argument("--protocol", choices=sorted(SIZES), default="sysu")
    parser.add_argument("--num-query", type=int, default=None)
    parser.add_argument("--num-gallery", type=int, default=None)
    parser.add_argument("--num-ids", type=int, default=None)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--noise", type=float, default=1.5, help="feature noise / centre scale")
    parser.add_argument("--repeats", type=int, default=3, help="vectorised runs (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    num_q, num_g, num_ids = SIZES[args.protocol]
    num_q = args.num_query or num_q
    num_g = args.num_gallery or num_g
    num_ids = args.num_ids or num_ids
    distmat, q_pids, g_pids, q_cams, g_cams = make_case(
        args.protocol, num_q, num_g, num_ids, args.dim, args.noise, args.seed
    )
    sysu = args.protocol == "sysu"

    vec_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fast = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, args.protocol)
        vec_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    ref = reference_loop(
        distmat,
        q_pids,
        g_pids,
        q_cams if sysu else None,
        g_cams if sysu else None,
        dedup_cmc=sysu,
    )
    loop_s = time.perf_counter() - start

    diff = max(
        float(np.abs(fast["cmc"] - ref["cmc"]).max()),
        abs(fast["mAP"] - ref["mAP"]),
        abs(fast["mINP"] - ref["mINP"]),
    )
    record = {
        "bench": "metrics",
        "protocol": args.protocol,
        "shape": [num_q, num_g],
        "num_ids": num_ids,
        "threads": args.threads,
        "vectorised_s": round(min(vec_times), 4),
        "loop_s": round(loop_s, 4),
        "speedup": round(loop_s / min(vec_times), 1),
        "max_abs_diff": diff,
        "identical": diff <= TOLERANCE,
        "rank1": round(float(fast["cmc"][0]), 4),
        "mAP": round(fast["mAP"], 4),
        "mINP": round(fast["mINP"], 4),
    }
    print(json.dumps(record))
    return record
