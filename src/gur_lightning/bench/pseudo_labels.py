"""Benchmark of the pseudo-label engine: ``python -m gur_lightning.bench pseudo_labels``.

Times :func:`gur_lightning.clustering.dbscan_labels` (exact kNN, sparse k-reciprocal Jaccard,
DBSCAN on a radius graph) on synthetic clustered unit vectors, against a *baseline*: a plain
loop-by-loop port of the reference ``compute_jaccard_distance`` + dense scikit-learn DBSCAN
(docs/method.md §7.2-7.3), written out below. Prints one JSON line with ``n, dim, seconds,
baseline_seconds, speedup, knn_seconds, peak_rss_mb, identical`` and details.

The fast path runs in a fresh subprocess so that its peak RSS (``ru_maxrss``, which includes the
Python/torch runtime and the (N, D) feature matrix) is not polluted by the baseline's dense N x N
matrices. Targets (d = 2048, 2-core CPU): N = 10,000 at least 10x faster than the baseline
with identical labels; N = 20,000 within 1.5x of the kNN alone; N = 34,167 at most 25 s and 2 GB;
N = 100,000 completes under 8 GB (``--n 100000 --skip-baseline``, a manual run).

``--repeat R`` runs R interleaved rounds (fast path, baseline) and reports medians plus the
per-round figures: on a shared machine a burst of outside load can double one run's time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gur_lightning.clustering.options import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_K1,
    DEFAULT_K2,
    DEFAULT_KERNELS,
    DEFAULT_MIN_SAMPLES,
    KERNEL_CHOICES,
)

DEFAULT_ARGS: list[list[str]] = [
    ["--n", "10000", "--threads", "2"],
    ["--n", "10000", "--threads", "2", "--kernels", "numpy"],
    ["--n", "20000", "--skip-baseline", "--threads", "2"],
    ["--n", "34167", "--skip-baseline", "--threads", "1"],
    ["--n", "34167", "--skip-baseline", "--threads", "2"],
]
"""Thread counts are explicit (docs/performance.md, technique 9): on a shared 2-core machine two
OpenMP threads can lose to one, so the SYSU-size run is timed both ways. The second run shows
what the numba kernels are worth (the numpy paths give the same labels)."""

PROPOSALS = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}
"""``--proposal`` choices: the kNN's candidate-proposal product (certified, labels unchanged)."""

BLOB_SIZE = 20
"""Mean points per synthetic identity (the brief's ~N/20 blobs)."""
FAMILY_SIZE = 5
"""Identities per 'look-alike family' sharing a common direction (confusable neighbours)."""
FAMILY_WEIGHT = 0.6
"""Weight of the family direction relative to the identity's own (unit) direction."""
SPREAD_RANGE = (0.7, 1.3)
"""Per-identity noise norm range: within-identity cosine roughly 0.35-0.7, as trained features."""
NOISE_FRACTION = 0.05
"""Fraction of pure-noise points (uniform on the sphere): DBSCAN's outliers."""
GEN_CHUNK = 4096
"""Rows generated at a time, so that no float64 (N, D) temporary is ever formed."""


def synthetic_features(
    n: int, dim: int = 2048, seed: int = 0, blob_size: int = BLOB_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors: ~n / blob_size Gaussian identities on the sphere plus noise.

    Identities come in families of :data:`FAMILY_SIZE` that share a direction, so that nearest
    neighbours include look-alikes, as in re-ID features.

    Args:
        n: Number of points.
        dim: Dimension.
        seed: Random seed (the data is a deterministic function of its arguments).
        blob_size: Mean identity size.

    Returns:
        ``(features (n, dim) float32 unit rows, identity (n,) int64 with -1 for noise points)``.
    """
    rng = np.random.default_rng(seed)
    num_ids = max(1, n // blob_size)
    num_fam = max(1, num_ids // FAMILY_SIZE)

    def unit(rows: int) -> np.ndarray:
        v = rng.standard_normal((rows, dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    family = unit(num_fam)
    centres = unit(num_ids) + FAMILY_WEIGHT * family[rng.integers(0, num_fam, num_ids)]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(*SPREAD_RANGE, size=num_ids).astype(np.float32)
    ids = rng.integers(0, num_ids, size=n)
    noise = rng.random(n) < NOISE_FRACTION
    ids[noise] = -1
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, GEN_CHUNK):
        e = min(n, s + GEN_CHUNK)
        lab = ids[s:e]
        g = rng.standard_normal((e - s, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        own = lab >= 0
        g[own] = centres[lab[own]] + spread[lab[own], None] * g[own]
        out[s:e] = g / np.linalg.norm(g, axis=1, keepdims=True)
    return out, ids.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Baseline: the reference algorithm, loop by loop (dense N x N float32 matrices).
# --------------------------------------------------------------------------------------------


def baseline_knn(x: torch.Tensor, k: int, chunk: int = 1024) -> np.ndarray:
    """Exhaustive float32 L2 search with the point itself, like faiss ``IndexFlatL2``."""
    norms = (x * x).sum(1)
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for s in range(0, x.shape[0], chunk):
        d = norms[s : s + chunk, None] + norms[None, :] - 2.0 * (x[s : s + chunk] @ x.t())
        out[s : s + chunk] = torch.topk(d, k, dim=1, largest=False).indices.numpy()
    return out


def _k_reciprocal_neigh(initial_rank: np.ndarray, i: int, k1: int) -> np.ndarray:
    forward = initial_rank[i, : k1 + 1]
    backward = initial_rank[forward, : k1 + 1]
    return forward[np.where(backward == i)[0]]


def baseline_jaccard(x: torch.Tensor, k1: int, k2: int) -> np.ndarray:
    """The reference ``compute_jaccard_distance(search_option=3)``, ported loop by loop."""
    n = x.shape[0]
    initial_rank = baseline_knn(x, k1)
    nn_k1 = [_k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
    nn_half = [_k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2.0))) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        recip = nn_k1[i]
        expansion = recip
        for cand in recip:
            cand_recip = nn_half[cand]
            if len(np.intersect1d(cand_recip, recip)) > 2 / 3 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        dist = 2 - 2 * torch.mm(x[i].unsqueeze(0), x[expansion].t())
        v[i, expansion] = F.softmax(-dist, dim=1).view(-1).numpy()
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
        del v_qe
    inv_index = [np.where(v[:, c] != 0)[0] for c in range(n)]
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros((1, n), dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        images = [inv_index[c] for c in nonzero]
        for j in range(len(nonzero)):
            temp_min[0, images[j]] = temp_min[0, images[j]] + np.minimum(
                v[i, nonzero[j]], v[images[j], nonzero[j]]
            )
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    del inv_index, v
    jaccard[jaccard < 0] = 0.0
    return jaccard


def baseline_labels(x: np.ndarray, eps: float, min_samples: int, k1: int, k2: int) -> np.ndarray:
    """Reference pseudo-labels: dense Jaccard, then ``DBSCAN(metric="precomputed")``."""
    from sklearn.cluster import DBSCAN

    dist = baseline_jaccard(torch.from_numpy(x), k1, k2)
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1)
    return model.fit_predict(dist).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Fast path (run in a fresh subprocess) and the driver.
# --------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MB.

    Linux's ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss``
    survives ``exec``, so a worker started by a parent that has already run the dense
    baseline would report the parent's peak. ``ru_maxrss`` is the fallback elsewhere.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_fast(args: argparse.Namespace) -> dict:
    from gur_lightning.clustering import (
        JaccardOptions,
        JaccardTimings,
        KnnOptions,
        cluster_statistics,
        dbscan_labels,
    )
    from gur_lightning.clustering.knn import resolve_kernels, resolve_knn_backend

    x, truth = synthetic_features(args.n, args.dim, args.seed)
    # Resolving the backend imports faiss when it is installed (~50 ms), and resolving the scan
    # loads the compiled kernels (~0.2 s from numba's cache): a process pays both once, at its
    # first clustering, so they are paid here, outside the timed pseudo-labelling.
    resolve_knn_backend("auto", torch.device("cpu"))
    compiled = resolve_kernels(args.kernels)
    rss_before = _peak_rss_mb()
    timings = JaccardTimings()
    start, cpu_start = time.perf_counter(), time.process_time()
    knn = KnnOptions(
        block_size=args.block_size, proposal_dtype=PROPOSALS[args.proposal], kernels=args.kernels
    )
    labels = dbscan_labels(
        x,
        eps=args.eps,
        min_samples=args.min_samples,
        jaccard=JaccardOptions(k1=args.k1, k2=args.k2, knn=knn),
        timings=timings,
    )
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    # Noise points are identities of their own, not one big identity "-1".
    noise = np.flatnonzero(truth < 0)
    truth[noise] = truth.max() + 1 + np.arange(noise.size)
    stats = cluster_statistics(labels, true_pids=truth)
    return {
        "labels": labels,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "knn_seconds": timings.knn,
        "weights_seconds": timings.weights,
        "jaccard_seconds": timings.jaccard,
        "dbscan_seconds": timings.extra.get("dbscan", 0.0),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": rss_before,
        "kernels": "numpy" if compiled is None else "numba",
        "knn_rows_rescored": timings.knn_rows_rescored,
        "knn_rows_recomputed": timings.knn_rows_recomputed,
        "nnz_query_expanded": timings.nnz_query_expanded,
        "contributions": timings.contributions,
        "pairs_kept": timings.pairs_kept,
        "num_clusters": stats["num_clusters"],
        "outlier_fraction": stats["outlier_fraction"],
        "ari_vs_truth": stats["ari"],
        "ari_outliers_singletons": stats["ari_outliers_singletons"],
    }


#: Timings of the fast path reported as medians over ``--repeat`` rounds.
_MEDIAN_KEYS = (
    "seconds",
    "cpu_seconds",
    "knn_seconds",
    "weights_seconds",
    "jaccard_seconds",
    "dbscan_seconds",
)


def _fast_in_subprocess(forwarded: list[str], threads: int) -> tuple[dict, np.ndarray]:
    """Run the fast path once in a fresh process; return its record and labels."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fast.json"
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cmd = [sys.executable, "-m", "gur_lightning.bench.pseudo_labels", *forwarded]
        cmd += ["--threads", str(threads), "--worker-out", str(out)]
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text()), np.load(out.with_suffix(".npy"))


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (every run of :data:`DEFAULT_ARGS` must parse)."""
    p = argparse.ArgumentParser(prog="gur_lightning.bench pseudo_labels", description=__doc__)
    p.add_argument("--n", type=int, required=True, help="number of points")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (2048)")
    p.add_argument("--eps", type=float, default=0.6, help="DBSCAN radius (0.6)")
    p.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES)
    p.add_argument("--k1", type=int, default=DEFAULT_K1)
    p.add_argument("--k2", type=int, default=DEFAULT_K2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="CPU kNN block rows")
    p.add_argument(
        "--proposal",
        choices=sorted(PROPOSALS),
        default="none",
        help="kNN candidate proposals in a cheaper format, certified exact (default: none)",
    )
    p.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        default=DEFAULT_KERNELS,
        help="compiled (numba) or numpy kNN scan, reciprocal sets and Jaccard sums (default: "
        "numba when installed; same labels either way)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--skip-baseline", action="store_true", help="only time the fast path")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of (fast path, baseline), interleaved; times are medians (noisy machines)",
    )
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return one JSON-able record (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.worker_out is not None:
        result = _run_fast(args)
        np.save(args.worker_out.with_suffix(".npy"), result.pop("labels"))
        args.worker_out.write_text(json.dumps(result))
        return result
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--skip-baseline"]
    x = None if args.skip_baseline else synthetic_features(args.n, args.dim, args.seed)[0]
    fasts: list[dict] = []
    bases: list[tuple[float, float, bool]] = []
    # Rounds interleave the two sides, so that a burst of outside load hits both alike.
    for _ in range(args.repeat):
        fast, fast_labels = _fast_in_subprocess(forwarded, threads)
        fasts.append(fast)
        if x is not None:
            start, cpu_start = time.perf_counter(), time.process_time()
            base = baseline_labels(x, args.eps, args.min_samples, args.k1, args.k2)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            bases.append((wall, cpu, bool(np.array_equal(base, fast_labels))))
    fast = {key: float(np.median([f[key] for f in fasts])) for key in _MEDIAN_KEYS}
    fast |= {key: fasts[-1][key] for key in fasts[-1] if key not in fast}
    fast["peak_rss_mb"] = max(f["peak_rss_mb"] for f in fasts)
    record: dict = {
        "n": args.n,
        "dim": args.dim,
        "seconds": round(fast["seconds"], 3),
        "baseline_seconds": None,
        "speedup": None,
        "knn_seconds": round(fast["knn_seconds"], 3),
        "peak_rss_mb": round(fast["peak_rss_mb"], 1),
        "identical": None,
        "repeat": args.repeat,
    }
    if bases:
        wall = float(np.median([b[0] for b in bases]))
        cpu = float(np.median([b[1] for b in bases]))
        record["baseline_seconds"] = round(wall, 3)
        record["speedup"] = round(wall / fast["seconds"], 2)
        # CPU time: the work each side did, much less sensitive to other load on the machine.
        record["baseline_cpu_seconds"] = round(cpu, 3)
        record["cpu_speedup"] = round(cpu / fast["cpu_seconds"], 2)
        record["identical"] = all(b[2] for b in bases)
        if args.repeat > 1:
            record["speedup_per_round"] = [
                round(b[0] / f["seconds"], 2) for b, f in zip(bases, fasts, strict=True)
            ]
    if args.repeat > 1:
        record["seconds_per_round"] = [round(f["seconds"], 3) for f in fasts]
    record.update(
        {
            "total_over_knn": round(fast["seconds"] / max(fast["knn_seconds"], 1e-9), 3),
            "cpu_seconds": round(fast["cpu_seconds"], 3),
            "weights_seconds": round(fast["weights_seconds"], 3),
            "jaccard_seconds": round(fast["jaccard_seconds"], 3),
            "dbscan_seconds": round(fast["dbscan_seconds"], 3),
            "rss_before_mb": round(fast["rss_before_mb"], 1),
            "threads": threads,
            "proposal": args.proposal,
            "kernels": fast["kernels"],
            "eps": args.eps,
            "num_clusters": int(fast["num_clusters"]),
            "outlier_fraction": round(fast["outlier_fraction"], 4),
            "ari_vs_truth": round(fast["ari_vs_truth"], 4),
            "ari_outliers_singletons": round(fast["ari_outliers_singletons"], 4),
            "knn_rows_rescored": fast["knn_rows_rescored"],
            "knn_rows_recomputed": fast["knn_rows_recomputed"],
            "contributions": fast["contributions"],
            "pairs_kept": fast["pairs_kept"],
        }
    )
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return record


if __name__ == "__main__":
    main()
