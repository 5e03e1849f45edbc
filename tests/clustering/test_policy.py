"""The stage policy (clustering/policy.py): each stage's labels, memories and routing, by hand.

The features are three tight blobs per modality (blob b near the b-th unit vector), so the true
partition is known: DBSCAN must return the blobs, the memories must be the normalised blob means,
and the routing must follow docs/method.md §9.3 / §10.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gur_lightning.clustering import cae_embedding, dbscan_labels
from gur_lightning.clustering import policy as policy_mod
from gur_lightning.clustering.policy import (
    ClusterOptions,
    Prototypes,
    cluster_phase,
    prototypes_after,
)
from gur_lightning.schedule import Phase

D = 8
#: Neighbourhoods wide enough for a blob of 8 (both modalities), small enough to keep blobs apart.
OPTIONS = ClusterOptions(
    eps=0.5, eps_intra_camera=0.5, eps_inter_modality=0.5, min_samples=2, k1=8, k2=2, cmlu_topk=4
)
BLOB = np.repeat(np.arange(3), 4)  # 3 blobs x 4 samples, in blob order


def blobs(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.eye(D)[b] + 0.01 * torch.randn(4, D, generator=g) for b in range(3)])


def blob_means(x: torch.Tensor) -> torch.Tensor:
    means = torch.stack([x[4 * b : 4 * b + 4].double().mean(0) for b in range(3)])
    return (means / means.norm(dim=1, keepdim=True)).float()


FEATURES = {"visible": blobs(0), "infrared": blobs(1)}
# Identities 10, 11, 12 per blob: the statistics score the labels against them.
IDENTITIES = {"visible": BLOB + 10, "infrared": BLOB + 10}


def phase(stage: str, **kwargs) -> Phase:
    return Phase(index=0, gur_epoch=0, stage=stage, iterations=1, **kwargs)


def test_per_modality_stage_clusters_each_modality_into_its_own_memory():
    out = cluster_phase(phase("inter_camera"), FEATURES, IDENTITIES, Prototypes(), OPTIONS)
    for m in ("visible", "infrared"):
        np.testing.assert_array_equal(out.labels[m], BLOB)
        torch.testing.assert_close(out.centroids[m], blob_means(FEATURES[m]))
        assert out.statistics[f"{m}/num_clusters"] == 3.0
        assert out.statistics[f"{m}/ari"] == 1.0
    assert out.routing == {"visible": "visible", "infrared": "infrared"}
    assert out.knn_backend.startswith("torch")
    assert not any(k.startswith("visible_cmlu/") for k in out.statistics)


def test_cmlu_gives_visible_samples_infrared_ids_and_the_infrared_memory():
    # Infrared blobs listed in the order 2, 0, 1: infrared cluster ids 0, 1, 2 are blobs 2, 0, 1.
    order = torch.cat([torch.arange(8, 12), torch.arange(0, 4), torch.arange(4, 8)])
    features = {"visible": FEATURES["visible"], "infrared": FEATURES["infrared"][order]}
    identities = {"visible": BLOB + 10, "infrared": (BLOB + 10)[order.numpy()]}
    out = cluster_phase(
        phase("inter_camera", cmlu=True), features, identities, Prototypes(), OPTIONS
    )
    np.testing.assert_array_equal(out.labels["infrared"], BLOB)
    # Visible blob b lies next to infrared blob b, whose id is (1, 2, 0)[b].
    np.testing.assert_array_equal(out.labels["visible"], np.array([1, 2, 0]).repeat(4))
    assert out.routing == {"visible": "infrared", "infrared": "infrared"}
    # The visible memory is still built from the visible clustering (stage 3's prototype).
    torch.testing.assert_close(out.centroids["visible"], blob_means(FEATURES["visible"]))
    assert out.statistics["visible_cmlu/ari"] == 1.0


def test_inter_modality_stage_clusters_jointly_into_one_shared_memory():
    out = cluster_phase(phase("inter_modality"), FEATURES, IDENTITIES, Prototypes(), OPTIONS)
    np.testing.assert_array_equal(out.labels["visible"], BLOB)
    np.testing.assert_array_equal(out.labels["infrared"], BLOB)
    joint = torch.cat([FEATURES["visible"], FEATURES["infrared"]])
    members = [
        torch.cat([joint[4 * b : 4 * b + 4], joint[12 + 4 * b : 16 + 4 * b]]) for b in range(3)
    ]
    means = torch.stack([x.double().mean(0) for x in members])
    torch.testing.assert_close(
        out.centroids["shared"], (means / means.norm(dim=1, keepdim=True)).float()
    )
    assert out.routing == {"visible": "shared", "infrared": "shared"}
    assert out.statistics["cross_modal_cluster_fraction"] == 1.0
    assert out.statistics["num_clusters"] == 3.0
    assert out.statistics["visible/num_samples"] == out.statistics["infrared/num_samples"] == 12


def test_oracle_labels_are_the_identities_in_one_shared_memory():
    identities = {"visible": np.array([7, 7, 3, 3, 9, 9] * 2), "infrared": BLOB + 3}
    out = cluster_phase(
        phase("intra_camera", visible_camera=1, infrared_camera=3),
        FEATURES,
        identities,
        Prototypes(),
        dataclasses.replace(OPTIONS, oracle=True),
    )
    # Identities 3, 4, 5, 7, 9 -> labels 0, 1, 2, 3, 4.
    np.testing.assert_array_equal(out.labels["visible"], [3, 3, 0, 0, 4, 4] * 2)
    np.testing.assert_array_equal(out.labels["infrared"], BLOB)
    assert out.routing == {"visible": "shared", "infrared": "shared"}
    assert out.centroids["shared"].shape == (5, D)
    assert out.knn_backend == ""


def test_camera_cae_clusters_cae_vectors_of_the_modality_s_camera_prototypes():
    protos = {
        ("visible", 1): FEATURES["visible"][[0, 4]],
        ("visible", 2): FEATURES["visible"][[8]],
        ("infrared", 3): FEATURES["infrared"][[0, 4, 8]],
    }
    seen: list[torch.Tensor] = []

    def spy(features, **kwargs):
        seen.append(features)
        return dbscan_labels(features, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(policy_mod, "dbscan_labels", spy)
    try:
        cluster_phase(
            phase("inter_camera", camera_cae=True),
            FEATURES,
            IDENTITIES,
            Prototypes(cameras=protos),
            OPTIONS,
        )
    finally:
        mp.undo()
    # Visible: two blocks (cameras 1 and 2, ascending), each a softmax over its prototypes.
    expected = cae_embedding(FEATURES["visible"], [protos[("visible", 1)], protos[("visible", 2)]])
    assert seen[0].shape == (12, 3)
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(seen[0][:, :2].sum(1), torch.ones(12))
    torch.testing.assert_close(seen[0][:, 2], torch.ones(12))  # one prototype: probability 1
    assert seen[1].shape == (12, 3)  # infrared: one camera of three prototypes


def test_every_stage_uses_its_own_radius_and_the_engine_options(monkeypatch):
    calls: list[dict] = []

    def record(features, **kwargs):
        calls.append(kwargs)
        return dbscan_labels(features, **kwargs)

    monkeypatch.setattr(policy_mod, "dbscan_labels", record)
    options = dataclasses.replace(
        OPTIONS, eps=0.51, eps_intra_camera=0.52, eps_inter_modality=0.53, kernels="numpy"
    )
    cameras = {"visible_camera": 1, "infrared_camera": 3}
    for stage, kwargs in [("intra_camera", cameras), ("inter_camera", {}), ("inter_modality", {})]:
        cluster_phase(phase(stage, **kwargs), FEATURES, IDENTITIES, Prototypes(), options)
    assert [c["eps"] for c in calls] == [0.52, 0.52, 0.51, 0.51, 0.53]
    assert all(
        (
            c["min_samples"],
            c["jaccard"].k1,
            c["jaccard"].k2,
            c["jaccard"].knn.kernels,
            c["jaccard"].knn.backend,
        )
        == (2, 8, 2, "numpy", "auto")
        for c in calls
    )


def test_no_cluster_is_a_value_error_naming_the_modality():
    options = dataclasses.replace(OPTIONS, min_samples=100)
    with pytest.raises(ValueError, match="DBSCAN found no cluster among the 12 visible samples"):
        cluster_phase(phase("inter_camera"), FEATURES, IDENTITIES, Prototypes(), options)
    with pytest.raises(ValueError, match="no cluster among the 24 joint samples"):
        cluster_phase(phase("inter_modality"), FEATURES, IDENTITIES, Prototypes(), options)


def test_mismatched_identities_are_refused():
    with pytest.raises(ValueError, match="12 infrared features but 11 infrared identities"):
        cluster_phase(
            phase("inter_camera"),
            FEATURES,
            {"visible": BLOB, "infrared": BLOB[:11]},
            Prototypes(),
            OPTIONS,
        )


def test_prototypes_after_keeps_cameras_of_stage_1_and_modalities_of_stage_2():
    a, b, c, d = (torch.full((2, D), float(v)) for v in range(4))
    start = Prototypes(cameras={("visible", 1): a, ("infrared", 3): a}, modalities={"visible": a})
    s1 = phase("intra_camera", visible_camera=2, infrared_camera=3)
    after = prototypes_after(s1, {"visible": b, "infrared": c}, start)
    # Camera v2 added, camera i3 replaced (the last pairing wins), v1 and the modalities kept.
    assert after.cameras == {("visible", 1): a, ("infrared", 3): c, ("visible", 2): b}
    assert after.modalities == {"visible": a}
    assert start.cameras == {("visible", 1): a, ("infrared", 3): a}  # not modified
    s2 = prototypes_after(phase("inter_camera"), {"visible": c, "infrared": d}, after)
    assert s2.cameras == after.cameras
    assert s2.modalities == {"visible": c, "infrared": d}
    # Stage 3 and one shared memory (the oracle) leave the prototypes as they are.
    assert prototypes_after(phase("inter_modality"), {"visible": a, "infrared": a}, s2) is s2
    assert prototypes_after(s1, {"shared": a}, s2) is s2


def test_eps_of_maps_each_stage_to_its_option():
    o = ClusterOptions(eps=0.1, eps_intra_camera=0.2, eps_inter_modality=0.3)
    assert [o.eps_of(s) for s in ("intra_camera", "inter_camera", "inter_modality")] == [
        0.2,
        0.1,
        0.3,
    ]
