import json

import numpy as np

from gur_lightning.bench import pseudo_labels


def test_synthetic_features_deterministic_unit_rows():
    a, ids_a = pseudo_labels.synthetic_features(200, 16, seed=3)
    b, ids_b = pseudo_labels.synthetic_features(200, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert a.dtype == np.float32 and (ids_a == -1).any() and ids_a.max() >= 5


def test_benchmark_record_small(capsys):
    record = pseudo_labels.main(["--n", "400", "--dim", "32", "--threads", "1"])
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and json.loads(line[0]) == record
    for key in ("n", "dim", "seconds", "baseline_seconds", "speedup", "knn_seconds"):
        assert record[key] is not None
    assert record["identical"] is True
    assert record["peak_rss_mb"] > 0 and record["num_clusters"] > 1


def test_default_args_parse():
    parser = pseudo_labels.build_parser()
    for argv in pseudo_labels.DEFAULT_ARGS:
        assert parser.parse_args(argv).n >= 10_000


def test_benchmark_repeat_reports_medians_of_interleaved_rounds(capsys):
    record = pseudo_labels.main(["--n", "300", "--dim", "16", "--threads", "1", "--repeat", "3"])
    capsys.readouterr()
    rounds, speedups = record["seconds_per_round"], record["speedup_per_round"]
    assert record["repeat"] == 3 and len(rounds) == 3 and len(speedups) == 3
    assert record["seconds"] == round(float(np.median(rounds)), 3)
    assert record["identical"] is True


def test_benchmark_reports_the_kernels_it_ran(capsys):
    numpy_run = pseudo_labels.main(["--n", "300", "--dim", "16", "--kernels", "numpy"])
    auto_run = pseudo_labels.main(["--n", "300", "--dim", "16", "--skip-baseline"])
    capsys.readouterr()
    assert numpy_run["kernels"] == "numpy" and numpy_run["identical"] is True
    from gur_lightning.clustering.knn.backends import load_compiled_kernels

    assert auto_run["kernels"] == ("numpy" if load_compiled_kernels() is None else "numba")
