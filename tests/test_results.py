"""The SynVI results table: rendering and the --table-only rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gur_lightning import results
from gur_lightning.results import ROWS, write_table


def _metrics(rank1: float, within: bool) -> dict[str, float]:
    m = {
        "test/sysu_all/rank1": rank1,
        "test/sysu_all/rank1_std": 0.01,
        "test/sysu_all/mAP": 0.25,
        "test/sysu_all/mAP_std": 0.005,
        "test/sysu_all/mINP": 0.125,
        "test/sysu_all/mINP_std": 0.0,
    }
    if within:
        m |= {"test/within_visible/mAP": 0.5, "test/within_infrared/mAP": 0.0625}
    return m


def test_table_has_a_within_modality_column_only_when_every_row_has_it(tmp_path: Path) -> None:
    rows = [r for r in ROWS if r.key in ("raw_pixels", "gur")]
    (tmp_path / "gur").mkdir()
    history = [{"skipped": False, "visible/ari": 0.5, "infrared/ari": 0.25}]
    (tmp_path / "gur" / "clustering_history.json").write_text(json.dumps(history))
    table = write_table(tmp_path, rows, {r.key: _metrics(0.125, True) for r in rows})
    lines = table.splitlines()
    assert lines[0].endswith("| within-modality mAP (visible / infrared) |")
    assert lines[2] == (
        "| raw pixels (flattened, cosine) | 12.5 ± 1.0 | 25.0 ± 0.5 | 12.5 ± 0.0 | — "
        "| 50.0 / 6.2 |"
    )
    assert lines[3].endswith("| 0.500 / 0.250 | 50.0 / 6.2 |")
    assert (tmp_path / "table.md").read_text() == table
    mixed = {"raw_pixels": _metrics(0.125, True), "gur": _metrics(0.125, False)}
    assert "within-modality" not in write_table(tmp_path, rows, mixed)


def test_table_only_rebuilds_from_finished_folders(tmp_path: Path) -> None:
    for key in ("raw_pixels", "untrained"):
        (tmp_path / key).mkdir()
        (tmp_path / key / "metrics.json").write_text(json.dumps(_metrics(0.5, False)))
    argv = ["--out", str(tmp_path), "--rows", "raw_pixels,untrained", "--table-only"]
    assert results.main(argv) == 0
    assert "| untrained network | 50.0 ± 1.0 |" in (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit, match=r"no metrics.json for rows \['gur'\]"):
        results.main(["--out", str(tmp_path), "--rows", "raw_pixels,gur", "--table-only"])
