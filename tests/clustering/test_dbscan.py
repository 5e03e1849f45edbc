import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from gur_lightning.clustering import (
    JaccardOptions,
    KnnOptions,
    dbscan_labels,
    dbscan_on_graph,
    jaccard_distance,
)
from gur_lightning.clustering.jaccard import JaccardTimings


def _blobs(n_blobs: int, per: int, d: int, spread: float, noise: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per, 0) + spread * rng.standard_normal((n_blobs * per, d)) / np.sqrt(d)
    truth = np.repeat(np.arange(n_blobs), per)
    if noise:
        x = np.concatenate([x, rng.standard_normal((noise, d))])
        truth = np.concatenate([truth, -np.ones(noise, dtype=int)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), truth[order]


@pytest.mark.parametrize(("eps", "min_samples"), [(0.3, 4), (0.6, 4), (0.55, 2), (0.45, 8)])
def test_labels_identical_to_sklearn_on_dense_matrix(eps, min_samples):
    x, _ = _blobs(12, 18, 32, spread=1.2, noise=40, seed=1)
    dense = jaccard_distance(x)
    expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)
    labels = dbscan_labels(x, eps, min_samples)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)
    assert labels.max() >= 1  # several real clusters: not a vacuous match


def test_jaccard_options_reach_the_distance():
    """k1, k2 and the engine options travel to the Jaccard distance the labels are computed on."""
    x, _ = _blobs(12, 18, 32, spread=1.2, noise=40, seed=1)
    options = JaccardOptions(10, 3, knn=KnnOptions(block_size=64, kernels="numpy"))
    expected = DBSCAN(eps=0.5, min_samples=4, metric="precomputed").fit_predict(
        jaccard_distance(x, JaccardOptions(10, 3))
    )
    default = DBSCAN(eps=0.5, min_samples=4, metric="precomputed").fit_predict(jaccard_distance(x))
    assert not np.array_equal(expected, default)  # k1 = 10 labels differently from k1 = 30
    np.testing.assert_array_equal(dbscan_labels(x, 0.5, 4, jaccard=options), expected)
    with pytest.raises(ValueError, match="knn_backend"):
        dbscan_labels(x, 0.5, jaccard=JaccardOptions(knn=KnnOptions(backend="annoy")))


def test_random_graphs_match_sklearn_incl_missing_self_loops():
    # DBSCAN's subtle points: border points reachable from two clusters, ties at eps, and points
    # whose own distance exceeds eps (not their own neighbour on the dense matrix).
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 25))
        d = rng.uniform(0, 1, (n, n)).astype(np.float32)
        d = np.round(np.minimum(d, d.T), 1)
        diag = np.where(rng.random(n) < 0.2, rng.uniform(0, 1, n), 0.0)
        d[np.arange(n), np.arange(n)] = diag
        eps = float(rng.choice([1e-9, 0.1, 0.3, 0.5]))
        min_samples = int(rng.integers(1, 6))
        expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d)
        r, c = np.nonzero(d <= eps)
        graph = sp.csr_matrix((d[r, c], (r, c)), shape=(n, n))
        np.testing.assert_array_equal(dbscan_on_graph(graph, eps, min_samples), expected)


def test_hand_graph():
    # Pairs at distance 0.2: 0-1, 1-2, 4-5, 5-6, 3-6; everything else at 1. With eps 0.3 and
    # min_samples 3 (self included) the cores are 1 {0,1,2}, 5 {4,5,6} and 6 {3,5,6}: 0 and 2
    # are borders of cluster 0; 3 and 4 borders of cluster 1 (numbered by smallest core index).
    d = np.ones((7, 7), dtype=np.float32)
    np.fill_diagonal(d, 0)
    for i, j in [(0, 1), (1, 2), (4, 5), (5, 6), (3, 6)]:
        d[i, j] = d[j, i] = 0.2
    r, c = np.nonzero(d <= 0.3)
    graph = sp.csr_matrix((d[r, c], (r, c)), shape=d.shape)
    np.testing.assert_array_equal(dbscan_on_graph(graph, 0.3, 3), [0, 0, 0, 1, 1, 1, 1])
    # min_samples 4: no core point at all.
    np.testing.assert_array_equal(dbscan_on_graph(graph, 0.3, 4), -np.ones(7, dtype=np.int64))


def test_well_separated_blobs_are_found():
    x, truth = _blobs(8, 20, 64, spread=0.5, seed=2)
    labels = dbscan_labels(x, 0.6)
    assert labels.max() + 1 == 8
    assert (labels >= 0).all()
    # one-to-one with the truth
    pairs = set(zip(labels.tolist(), truth.tolist(), strict=True))
    assert len(pairs) == 8


def test_all_outliers_is_a_valid_result():
    x = np.random.default_rng(3).standard_normal((80, 64)).astype(np.float32)
    labels = dbscan_labels(x, 0.05)
    np.testing.assert_array_equal(labels, -np.ones(80, dtype=np.int64))


def test_duplicates_and_timings():
    x, _ = _blobs(4, 10, 16, spread=0.6, seed=4)
    x[1:5] = x[0]
    t = JaccardTimings()
    labels = dbscan_labels(x, 0.6, timings=t)
    assert len(set(labels[:5].tolist())) == 1 and labels[0] >= 0
    assert "dbscan" in t.extra and t.knn > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.0}, "eps"),
        ({"eps": 0.5, "min_samples": 0}, "min_samples"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dbscan_labels(np.eye(10, dtype=np.float32), **kwargs)
