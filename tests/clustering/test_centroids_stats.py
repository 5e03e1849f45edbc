import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from gur_lightning.clustering import cluster_centroids, cluster_statistics, relabel_contiguous


def test_relabel_contiguous_numpy_and_torch():
    out, k = relabel_contiguous(np.array([5, -1, 3, 5, 9]))
    assert k == 3 and out.tolist() == [1, -1, 0, 1, 2] and out.dtype == np.int64
    out_t, k_t = relabel_contiguous(torch.tensor([7, 7, -1]))
    assert isinstance(out_t, torch.Tensor) and k_t == 1 and out_t.tolist() == [0, 0, -1]
    empty, k0 = relabel_contiguous(np.array([-1, -1]))
    assert k0 == 0 and empty.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="-1"):
        relabel_contiguous(np.array([0, -3]))


def test_centroids_hand_computed():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [9.0, 9.0], [0.0, 2.0]])
    labels = torch.tensor([1, 1, 0, -1, 0])
    cents = cluster_centroids(feats, labels)
    # cluster 0: mean (1.5, 3) -> /sqrt(11.25); cluster 1: mean (0.5, 0.5) -> (1, 1)/sqrt(2)
    expected = [[1.5 / math.sqrt(11.25), 3 / math.sqrt(11.25)], [1 / math.sqrt(2)] * 2]
    np.testing.assert_allclose(cents.numpy(), expected, rtol=1e-6)
    assert cents.dtype == torch.float32


def test_centroids_edge_cases():
    assert cluster_centroids(np.ones((3, 4)), np.array([-1, -1, -1])).shape == (0, 4)
    with pytest.raises(ValueError, match="contiguous"):
        cluster_centroids(np.ones((3, 4)), np.array([0, 2, 2]))
    with pytest.raises(ValueError, match="entries"):
        cluster_centroids(np.ones((3, 4)), np.array([0, 0]))


def test_statistics_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, 2, -1, -1, 3, 3])
    s = cluster_statistics(labels)
    assert s["num_samples"] == 10 and s["num_clusters"] == 4 and s["num_outliers"] == 2
    assert s["outlier_fraction"] == pytest.approx(0.2)
    assert (s["cluster_size_min"], s["cluster_size_max"]) == (1, 3)
    assert s["cluster_size_mean"] == pytest.approx(2.0) and s["cluster_size_median"] == 2.0
    assert s["num_singletons"] == 1
    assert all(isinstance(v, float) for v in s.values())


def test_statistics_against_sklearn_and_hand_purity():
    labels = np.array([0, 0, 0, 1, 1, 2, -1, -1, 3, 3])
    truth = np.array([5, 5, 6, 6, 6, 7, 7, 8, 8, 8])
    s = cluster_statistics(labels, true_pids=truth)
    keep = labels >= 0
    assert s["ari"] == pytest.approx(adjusted_rand_score(truth[keep], labels[keep]))
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(truth[keep], labels[keep]))
    # purity over the 8 kept samples: clusters {5,5,6} -> 2, {6,6} -> 2, {7} -> 1, {8,8} -> 2
    assert s["purity"] == pytest.approx(7 / 8)
    singletons = np.array([0, 0, 0, 1, 1, 2, 4, 5, 3, 3])
    assert s["ari_outliers_singletons"] == pytest.approx(adjusted_rand_score(truth, singletons))
    assert s["num_true_ids"] == 4


def test_statistics_groups_and_shared():
    labels = np.array([0, 0, 1, -1, 1, 2, 2, -1])
    visible = np.array([True, True, True, True, False, False, False, False])
    s = cluster_statistics(labels, groups={"visible": visible, "infrared": ~visible})
    assert s["visible/num_samples"] == 4 and s["visible/num_clusters"] == 2
    assert s["visible/outlier_fraction"] == pytest.approx(0.25)
    assert s["infrared/num_clusters"] == 2 and s["infrared/outlier_fraction"] == 0.25
    assert s["shared/num_clusters"] == 1  # cluster 1 spans both modalities
    with pytest.raises(ValueError, match="boolean"):
        cluster_statistics(labels, groups={"cam1": np.ones(8)})
    with pytest.raises(ValueError, match="reserved"):
        cluster_statistics(labels, groups={"shared": visible})


def test_statistics_all_outliers_and_empty():
    s = cluster_statistics(np.array([-1, -1, -1]), true_pids=np.array([1, 2, 3]))
    assert s["num_clusters"] == 0 and s["outlier_fraction"] == 1.0
    assert s["cluster_size_max"] == 0.0 and math.isnan(s["ari"]) and math.isnan(s["purity"])
    assert s["ari_outliers_singletons"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="true_pids"):
        cluster_statistics(np.array([0, 1]), true_pids=np.array([1, 2, 3]))
