"""Logging and pictures: W&B offline / missing, image routing, ranking and quality pictures,
metrics.csv of the smoke run, and the sweep / SLURM launcher configs composing."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import OmegaConf, open_dict
from PIL import Image

from gur_lightning.callbacks.pictures import (
    ClusterQualityPictures,
    RankingPictures,
    build_picture_callbacks,
)
from gur_lightning.callbacks.recluster import Reclustering
from gur_lightning.config import register_configs, validate_config
from gur_lightning.data.samples import Sample
from gur_lightning.evaluation import protocol_splits
from gur_lightning.schedule import build_phases
from gur_lightning.train import CONF_DIR, build_datamodule, model_featurizer, train
from gur_lightning.utils import loggers as lg
from gur_lightning.visualize import (
    CORRECT_COLOUR,
    FRAME,
    MARGIN,
    QUERY_COLOUR,
    SERIES_COLOURS,
    TILE_HEIGHT,
    TILE_WIDTH,
    WRONG_COLOUR,
    cluster_quality_figures,
    draw_ranking,
    line_chart,
    nice_ticks,
    rank_gallery,
    select_queries,
)

ROOT = Path(__file__).resolve().parents[1]
#: Visible and infrared camera numbers of a SYSU-layout tree.
CAMS = ([1, 2, 4, 5], [3, 6])


def _installed(module: str) -> bool:
    # find_spec of a dotted name imports its parents and raises when a parent is missing
    # (no Hydra plugin at all installed: no `hydra_plugins` namespace).
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


HAS_WANDB = _installed("wandb")
HAS_OPTUNA = _installed("hydra_plugins.hydra_optuna_sweeper")
HAS_SUBMITIT = _installed("hydra_plugins.hydra_submitit_launcher")


def _compose(*overrides: str, hydra_cfg: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)


def _smoke(tmp: Path, *overrides: str, hydra_cfg: bool = False):
    return _compose(
        "+experiment=smoke",
        f"paths.data_dir={tmp / 'data'}",
        f"paths.output_dir={tmp / 'run'}",
        *overrides,
        hydra_cfg=hydra_cfg,
    )


class ImageRecorder(Logger):
    """A logger that records log_image calls (stands in for W&B)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list, int | None]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None) -> None:
        self.images.append((key, images, step))


# ---------------------------------------------------------------------------- rankings


def _s(pid: int, cam: int, name: str, modality: str = "visible") -> Sample:
    return Sample(f"/nonexistent/{name}.jpg", pid, cam, modality)


def _unit(*rows: tuple[float, float]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_rank_gallery_orders_by_cosine_and_applies_removal_rules():
    # Gallery directions at angles 0, 10, 20, 30, 40 degrees; the query at 0 degrees: the
    # cosine ranking is g0, g1, g2, g3, g4.
    angles = np.deg2rad([0, 10, 20, 30, 40])
    gf = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    gallery = [_s(7, 2, "g0"), _s(5, 1, "g1"), _s(7, 1, "g2"), _s(9, 2, "g3"), _s(7, 4, "g4")]
    q_ir3 = _s(7, 3, "q", "infrared")
    q_ir6 = _s(7, 6, "q6", "infrared")
    qf = _unit((1.0, 0.0), (1.0, 0.0))

    rows = rank_gallery(qf, gf, [q_ir3, q_ir6], gallery, protocol="sysu_all", topk=3)
    # SYSU: a camera-3 query drops every camera-2 gallery image (g0, g3), whatever the id.
    assert [g.path for g in rows[0].gallery] == [gallery[i].path for i in (1, 2, 4)]
    assert rows[0].correct == (False, True, True)
    # A camera-6 query keeps everything.
    assert [g.path for g in rows[1].gallery] == [gallery[i].path for i in (0, 1, 2)]
    assert rows[1].correct == (True, False, True)
    assert rows[1].distances == pytest.approx([-1.0, -math.cos(angles[1]), -math.cos(angles[2])])

    # LLCM: same identity AND same camera is removed (query pid 7 camera 1 drops g2 only).
    q_llcm = _s(7, 1, "ql")
    (row,) = rank_gallery(qf[:1], gf, [q_llcm], gallery, protocol="llcm_v2i", topk=10)
    assert [g.path for g in row.gallery] == [gallery[i].path for i in (0, 1, 3, 4)]
    # RegDB removes nothing; topk larger than the gallery returns the whole gallery.
    (row,) = rank_gallery(qf[:1], gf, [q_llcm], gallery, protocol="regdb_v2t", topk=10)
    assert len(row.gallery) == 5


def test_rank_gallery_ties_keep_gallery_order_and_bad_input_is_named():
    gallery = [_s(1, 1, "a"), _s(2, 1, "b"), _s(3, 1, "c")]
    gf = _unit((1.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    q = [_s(2, 3, "q")]
    (row,) = rank_gallery(_unit((1.0, 0.0)), gf, q, gallery, protocol="regdb_v2t")
    assert [g.pid for g in row.gallery] == [1, 2, 3]
    # No fallback for a name outside the protocol table: the error lists the known names.
    with pytest.raises(ValueError, match="unknown evaluation protocol 'market1501_x'.*sysu_all"):
        rank_gallery(_unit((1.0, 0.0)), gf, q, gallery, protocol="market1501_x")
    with pytest.raises(ValueError, match="2 query features for 1 queries"):
        rank_gallery(_unit((1.0, 0.0), (0, 1)), gf, q, gallery, protocol="regdb_v2t")
    with pytest.raises(ValueError, match="topk must be >= 1"):
        rank_gallery(_unit((1.0, 0.0)), gf, q, gallery, protocol="regdb_v2t", topk=0)


def test_select_queries_spreads_over_identities():
    # Identities 0..9 with 3 images each: the first image of ids 0, 3, 6, 9 (evenly spread).
    queries = [_s(pid, 3, f"{pid}_{k}") for pid in range(10) for k in range(3)]
    assert select_queries(queries, 4) == [0, 9, 18, 27]
    assert select_queries(queries[:2], 4) == [0, 1]  # fewer identities: every image
    assert select_queries(queries, 0) == []


def _solid(tmp: Path, name: str, colour: tuple[int, int, int]) -> str:
    path = tmp / f"{name}.png"
    Image.new("RGB", (20, 40), colour).save(path)
    return str(path)


def test_draw_ranking_frames_and_tiles(tmp_path, caplog):
    from gur_lightning.visualize import Ranking

    q = Sample(_solid(tmp_path, "q", (10, 20, 30)), 1, 3, "infrared")
    g_ok = Sample(_solid(tmp_path, "ok", (200, 200, 0)), 1, 1, "visible")
    g_bad = Sample(_solid(tmp_path, "bad", (0, 200, 200)), 2, 1, "visible")
    g_missing = Sample(str(tmp_path / "missing.jpg"), 2, 1, "visible")
    ranking = Ranking(q, (g_ok, g_bad, g_missing), (True, False, False), (0.0, 0.1, 0.2))
    with caplog.at_level(logging.WARNING):
        img = draw_ranking([ranking, ranking])
    assert "missing.jpg" in caplog.text  # the unreadable file is named, a placeholder drawn
    cell_w = TILE_WIDTH + 2 * FRAME + MARGIN
    assert img.width == MARGIN + 4 * cell_w + MARGIN
    top = MARGIN  # no title
    px = img.load()
    cell_h = (img.height - top) // 2
    for r in range(2):
        y = top + r * cell_h
        # Query: blue frame at (x=M, y), the query's own pixels inside.
        assert px[MARGIN + 1, y + 1] == QUERY_COLOUR
        assert px[MARGIN + FRAME + TILE_WIDTH // 2, y + FRAME + TILE_HEIGHT // 2] == (10, 20, 30)
        expected = [(CORRECT_COLOUR, (200, 200, 0)), (WRONG_COLOUR, (0, 200, 200))]
        expected.append((WRONG_COLOUR, (200, 200, 200)))  # placeholder tile
        for j, (frame, inside) in enumerate(expected):
            x = MARGIN + (j + 1) * cell_w + MARGIN
            assert px[x + 1, y + 1] == frame
            assert px[x + FRAME + TILE_WIDTH // 2, y + FRAME + TILE_HEIGHT // 2] == inside
        # The gap between the query column and the first gallery tile stays background.
        assert px[MARGIN + cell_w + MARGIN // 2, y + 1] == (255, 255, 255)
    with pytest.raises(ValueError, match="no rankings"):
        draw_ranking([])


# ------------------------------------------------------------------------------- charts


def test_nice_ticks_hand_cases():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # Range 73 / 5 = 14.6 -> step 20.
    assert nice_ticks(0, 73) == [0, 20, 40, 60, 80]
    # A flat range widens to [2.5, 3.5]: step 1/5 = 0.2, first tick floor(2.5 / 0.2) * 0.2.
    assert nice_ticks(3, 3) == pytest.approx([2.4, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6])
    ticks = nice_ticks(-0.13, 0.42)
    assert ticks[0] <= -0.13 and ticks[-1] >= 0.42
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, float("nan"))


def _rows_of(arr: np.ndarray, colour, cols: slice) -> np.ndarray:
    mask = np.all(arr[:, cols] == np.array(colour), axis=2)
    return np.nonzero(mask.any(axis=1))[0]


def test_line_chart_maps_values_to_pixels():
    # Two constant series at y = 0.25 and y = 0.75 on a fixed [0, 1] axis.
    series = {"low": [(0, 0.25), (4, 0.25)], "high": [(0, 0.75), (4, 0.75), (2, float("nan"))]}
    arr = np.asarray(line_chart(series, y_range=(0.0, 1.0), title="t", size=(500, 300)))
    black = np.all(arr == 0, axis=2)
    # The plot frame: the two rows with the longest black runs are its top (y=1) and bottom
    # (y=0); the two longest black columns its left (x=0) and right (x=4) sides.
    rows = np.argsort(black.sum(axis=1))[-2:]
    top, bottom = sorted(int(r) for r in rows)
    cols = np.argsort(black.sum(axis=0))[-2:]
    left, right = sorted(int(c) for c in cols)
    inside = slice(left + 5, right - 5)
    low = _rows_of(arr, SERIES_COLOURS[0], inside)
    high = _rows_of(arr, SERIES_COLOURS[1], inside)
    span = bottom - top
    assert np.median(low) == pytest.approx(bottom - 0.25 * span, abs=2)
    assert np.median(high) == pytest.approx(bottom - 0.75 * span, abs=2)
    # The lines run from x=0 to x=4: the whole width of the plot area.
    low_cols = np.nonzero(np.all(arr[int(np.median(low))] == SERIES_COLOURS[0], axis=1))[0]
    assert low_cols.min() <= left + 4 and low_cols.max() >= right - 4
    with pytest.raises(ValueError, match="no finite point"):
        line_chart({"a": [(0, float("inf"))]})


HISTORY = [
    {"phase": 0, "stage": "intra_camera", "skipped": False, "visible/ari": 0.5,
     "visible/nmi": 0.7, "visible/num_clusters": 9, "infrared/ari": 0.4,
     "infrared/nmi": 0.6, "infrared/num_clusters": 12},
    {"phase": 1, "stage": "intra_camera", "skipped": True},
    {"phase": 2, "stage": "inter_camera", "skipped": False, "visible/num_clusters": 40,
     "infrared/num_clusters": 30},
    {"phase": 3, "stage": "inter_modality", "skipped": False, "ari": 0.2, "nmi": 0.5,
     "num_clusters": 70, "visible/ari": 0.3, "visible/nmi": 0.6, "visible/num_clusters": 45},
]  # fmt: skip


def test_cluster_quality_figures_per_stage():
    figures = cluster_quality_figures(HISTORY)
    # Stage 2 carries no ARI/NMI here (no ground truth): only its cluster-count chart.
    assert list(figures) == [
        "cluster_quality/intra_camera",
        "cluster_count/intra_camera",
        "cluster_count/inter_camera",
        "cluster_quality/inter_modality",
        "cluster_count/inter_modality",
    ]
    assert all(img.mode == "RGB" and img.size == (640, 400) for img in figures.values())
    assert cluster_quality_figures([{"phase": 0, "stage": "intra_camera", "skipped": True}]) == {}


def _fake_trainer(tmp: Path, **kw):
    base = dict(is_global_zero=True, loggers=[ImageRecorder()], global_step=7, callbacks=[])
    base.update(kw)
    return SimpleNamespace(**base)


def test_cluster_quality_callback_reads_the_reclustering_history(tmp_path):
    cfg = _smoke(tmp_path)
    phases = build_phases(OmegaConf.to_object(cfg.schedule), *CAMS)
    recluster = Reclustering(phases)
    recluster.history.extend(HISTORY)
    cb = ClusterQualityPictures(tmp_path / "pictures", phases)
    trainer = _fake_trainer(tmp_path, callbacks=[recluster], current_epoch=0)
    cb.on_train_epoch_end(trainer, None)  # phase 0 is not the last of its GUR epoch
    assert cb.written == [] and not (tmp_path / "pictures").exists()
    last = next(p.index for p in phases if p.last_of_epoch)
    trainer.current_epoch = last
    cb.on_train_epoch_end(trainer, None)
    names = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert names == sorted(
        [
            "cluster_quality_intra_camera.png",
            "cluster_count_intra_camera.png",
            "cluster_count_inter_camera.png",
            "cluster_quality_inter_modality.png",
            "cluster_count_inter_modality.png",
        ]
    )
    assert [k for k, _, _ in trainer.loggers[0].images][:2] == [
        "cluster_quality/intra_camera",
        "cluster_count/intra_camera",
    ]
    assert all(step == 7 for _, _, step in trainer.loggers[0].images)
    # Unchanged history: not redrawn nor re-logged at fit end; other ranks never draw.
    n = len(trainer.loggers[0].images)
    cb.on_fit_end(trainer, None)
    assert len(trainer.loggers[0].images) == n
    assert cb.draw(_fake_trainer(tmp_path, is_global_zero=False)) == []


def test_ranking_callback_on_a_synvi_tree(tmp_path):
    cfg = _smoke(tmp_path, "eval.max_trials=1")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    all_pids = sorted({s.pid for s in dm.dataset.train} | set(dm.dataset.test_ids))
    index = {pid: i for i, pid in enumerate(all_pids)}

    def factory(pl_module, datamodule):
        # Perfect features: one-hot identity, so each query's same-id images rank first.
        def featurize(samples):
            out = torch.zeros(len(samples), len(all_pids))
            out[torch.arange(len(samples)), [index[s.pid] for s in samples]] = 1.0
            return out

        return featurize

    cb = RankingPictures(tmp_path / "pictures", factory, num_queries=3, topk=10)
    trainer = _fake_trainer(tmp_path, datamodule=dm)
    cb.on_fit_end(trainer, None)
    assert sorted(p.name for p in cb.written) == [
        "ranking_sysu_all.png",
        "ranking_sysu_indoor.png",
    ]
    splits = protocol_splits(dm.dataset, max_trials=1)
    hits = 0
    for name, rows in cb.rankings.items():
        assert len(rows) == 3
        _, gallery = splits[name][0]
        for row in rows:
            # Independent truth: SYSU drops camera-2 gallery images for camera-3 queries; with
            # one-hot identity features every kept same-identity image ranks first.
            kept = [g for g in gallery if not (row.query.camid == 3 and g.camid == 2)]
            same = min(10, sum(g.pid == row.query.pid for g in kept))
            hits += same
            assert row.correct == (True,) * same + (False,) * (min(10, len(kept)) - same)
        assert (tmp_path / "pictures" / f"ranking_{name}.png").is_file()
    assert hits > 0  # some query has a true match to mark
    keys = [k for k, _, _ in trainer.loggers[0].images]
    assert keys == ["ranking/sysu_all", "ranking/sysu_indoor"]


def test_build_picture_callbacks_follows_test_after_fit(tmp_path):
    cfg = _smoke(tmp_path)
    phases = build_phases(OmegaConf.to_object(cfg.schedule), [1, 2], [3])
    cbs = build_picture_callbacks(cfg, phases, tmp_path, lambda m, d: None)
    assert [type(c) for c in cbs] == [ClusterQualityPictures, RankingPictures]
    assert cbs[0].output_dir == tmp_path / "pictures"
    cfg = _smoke(tmp_path, "eval.test_after_fit=false")
    assert [type(c) for c in build_picture_callbacks(cfg, phases, tmp_path, None)] == [
        ClusterQualityPictures
    ]


# ------------------------------------------------------------------------------ loggers


class RecordingTensorBoard(TensorBoardLogger):
    def __init__(self) -> None:  # no tensorboard needed
        self.added: list[tuple[str, tuple, int | None, str]] = []

    @property
    def experiment(self):
        logger = self

        class Writer:
            def add_image(self, tag, array, global_step=None, dataformats="CHW"):
                logger.added.append((tag, array.shape, global_step, dataformats))

        return Writer()


def test_log_images_routes_to_loggers_that_show_images(tmp_path):
    rec, tb = ImageRecorder(), RecordingTensorBoard()
    csv_logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    image = Image.new("RGB", (8, 4))
    received = lg.log_images([rec, csv_logger, tb], {"a/b": image}, step=3)
    assert received == ["ImageRecorder", "RecordingTensorBoard"]
    assert rec.images == [("a/b", [image], 3)]
    assert tb.added == [("a/b", (4, 8, 3), 3, "HWC")]
    assert lg.log_images(None, {"a": image}) == []


def test_finish_loggers_flushes_metrics_logged_after_fit(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_metrics({"test/x/mAP": 0.5}, step=3)
    assert not (tmp_path / "csv" / "metrics.csv").exists()  # buffered until saved
    lg.finish_loggers(logger)
    assert _read_csv(tmp_path / "csv" / "metrics.csv") == [{"step": "3", "test/x/mAP": "0.5"}]
    lg.finish_loggers([logger, False])  # idempotent; non-loggers ignored


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails
    cfg = _smoke(tmp_path, "logger=wandb")
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    hint = re.escape("pip install 'gur-lightning[wandb]'")
    with pytest.raises(InstantiationException, match=hint):  # what `train` shows the user
        instantiate(cfg.logger)
    with pytest.raises(ModuleNotFoundError, match=hint):
        lg.build_wandb_logger(save_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        fallback = instantiate(cfg.logger, on_missing="csv")
    assert isinstance(fallback, CSVLogger)
    assert Path(fallback.log_dir) == tmp_path / "run" / "csv"
    assert "gur-lightning[wandb]" in caplog.text
    with pytest.raises(ValueError, match="logger.mode"):
        lg.build_wandb_logger(save_dir=str(tmp_path), mode="sometimes")


@pytest.mark.skipif(not HAS_WANDB, reason="wandb (optional extra) not installed")
def test_wandb_logger_respects_wandb_mode(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    cfg = _smoke(tmp_path, "logger=wandb")
    from hydra.utils import instantiate

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = instantiate(cfg.logger)
    assert isinstance(logger, WandbLogger)
    assert logger._wandb_init["mode"] == "disabled"
    assert logger._wandb_init["dir"] == str(tmp_path / "run")
    assert logger._wandb_init["group"] == "smoke"
    monkeypatch.delenv("WANDB_MODE")
    assert instantiate(cfg.logger)._wandb_init["mode"] == "offline"  # the default
    assert instantiate(cfg.logger, mode="online")._wandb_init["mode"] == "online"


def test_multirun_jobs_get_their_overrides_as_wandb_name(tmp_path):
    try:
        for mode, expected in (("MULTIRUN", "cluster.eps=0.5"), ("RUN", None)):
            cfg = _smoke(tmp_path, f"hydra.mode={mode}", hydra_cfg=True)
            with open_dict(cfg):
                cfg.hydra.job.override_dirname = "cluster.eps=0.5"
            HydraConfig.instance().set_config(cfg)
            assert lg.multirun_job_name() == expected
    finally:
        HydraConfig.instance().cfg = None
    assert lg.multirun_job_name() is None  # outside Hydra


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WANDB, reason="wandb (optional extra) not installed")
def test_wandb_offline_run_is_written_and_finished(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = lg.build_wandb_logger(save_dir=str(tmp_path), project="test", name="x")
    logger.log_metrics({"train/loss": 1.5}, step=0)
    assert lg.log_images([logger], {"pic": Image.new("RGB", (8, 8))}, step=1) == ["WandbLogger"]
    lg.finish_loggers(logger)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert logger._experiment is None
    lg.finish_loggers([logger])  # idempotent


# ------------------------------------------------------------------ smoke run metrics.csv


@pytest.fixture(scope="module")
def smoke_csv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logging_smoke")
    # One GUR epoch through all three stages, CMLU on from epoch 0: every statistic appears.
    cfg = _smoke(
        tmp,
        "schedule.epochs=1",
        "schedule.cmlu.start_epoch=0",
        "schedule.cmlu.smooth_start_epoch=0",
        "eval.val_every_n_epochs=1",
        "eval.max_trials=1",
    )
    phases = build_phases(OmegaConf.to_object(cfg.schedule), *CAMS)
    pictures = build_picture_callbacks(cfg, phases, tmp / "run", model_featurizer)
    metrics = train(cfg, extra_callbacks=pictures)
    return tmp / "run", cfg, metrics


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_csv_logger_receives_losses_lr_cluster_stats_val_and_test(smoke_csv):
    run, cfg, metrics = smoke_csv
    rows = _read_csv(run / "csv" / "metrics.csv")
    columns = set(rows[0])
    for key in (
        "train/loss",
        "train/loss_visible",
        "train/loss_infrared",
        "train/lr",
        "cluster/intra_camera/visible/ari",
        "cluster/intra_camera/infrared/nmi",
        "cluster/inter_camera/visible/num_clusters",
        "cluster/inter_camera/visible_cmlu/ari",
        "cluster/inter_modality/num_clusters",
        "cluster/inter_modality/ari",
        "cluster/inter_modality/skipped",
        "val/holdout/mAP",
    ):
        assert key in columns, key

    def values(key):
        return [float(r[key]) for r in rows if r.get(key)]

    # One logged learning rate per step, the undecayed one of GUR epoch 0 (docs/method.md §12).
    phases = json.loads((run / "clustering_history.json").read_text())
    steps = sum(p.iterations for p in build_phases(OmegaConf.to_object(cfg.schedule), *CAMS))
    assert values("train/lr") == pytest.approx([cfg.model.lr] * steps)
    assert len(phases) == 6
    assert all(math.isfinite(v) and v > 0 for v in values("train/loss"))
    # The logged cluster counts are those of clustering_history.json, in order.
    history = json.loads((run / "clustering_history.json").read_text())
    for stage, key in (
        ("intra_camera", "visible/num_clusters"),
        ("inter_modality", "num_clusters"),
    ):
        expected = [h[key] for h in history if h["stage"] == stage and not h["skipped"]]
        assert values(f"cluster/{stage}/{key}") == expected
    assert values("val/holdout/mAP")[-1] == pytest.approx(metrics["val/holdout/mAP"])


def test_csv_logger_receives_the_test_metrics(smoke_csv):
    run, _, metrics = smoke_csv
    rows = _read_csv(run / "csv" / "metrics.csv")
    logged = [float(r["test/sysu_all/mAP"]) for r in rows if r.get("test/sysu_all/mAP")]
    assert logged == pytest.approx([metrics["test/sysu_all/mAP"]])


def test_pictures_of_a_training_run(smoke_csv, tmp_path):
    run, _, _ = smoke_csv
    expected = {
        f"{kind}_{stage}.png"
        for kind in ("cluster_quality", "cluster_count")
        for stage in ("intra_camera", "inter_camera", "inter_modality")
    }
    expected |= {"ranking_sysu_all.png", "ranking_sysu_indoor.png"}
    written = {p.name for p in (run / "pictures").iterdir()}
    assert written == expected
    sizes = {Image.open(run / "pictures" / name).size for name in expected if "cluster" in name}
    assert sizes == {(640, 400)}
    # Ranking picture: the query column plus the top 10 (the indoor gallery may be smaller).
    width = Image.open(run / "pictures" / "ranking_sysu_all.png").width
    assert width == MARGIN + 11 * (TILE_WIDTH + 2 * FRAME + MARGIN) + MARGIN
    # The same drawing from the saved history gives identical curves.
    history = json.loads((run / "clustering_history.json").read_text())
    redrawn = ClusterQualityPictures(tmp_path, history=history).draw(_fake_trainer(tmp_path))
    for path in redrawn:
        assert np.array_equal(
            np.asarray(Image.open(path)), np.asarray(Image.open(run / "pictures" / path.name))
        )


# -------------------------------------------------------------------- sweeps and launcher


def _interval(spec: str) -> tuple[float, float]:
    m = re.fullmatch(r"interval\(([^,]+),([^)]+)\)", spec.replace(" ", ""))
    assert m, spec
    return float(m.group(1)), float(m.group(2))


@pytest.mark.skipif(not HAS_OPTUNA, reason="hydra-optuna-sweeper (sweep extra) not installed")
@pytest.mark.parametrize("experiment", ["smoke", "sysu", "regdb"])
def test_optuna_sweep_composes_inside_the_valid_ranges(tmp_path, experiment):
    over = [f"+experiment={experiment}", "+sweep=optuna", f"paths.output_dir={tmp_path}"]
    if experiment != "smoke":
        over.append(f"data.root={tmp_path}")
    cfg = _compose(*over, hydra_cfg=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(sweeper.params) == {"cluster.eps", "model.memory.momentum"}
    # Validation is on (the objective), once after the last GUR epoch, on held-out ids.
    assert cfg.eval.val_every_n_epochs == cfg.schedule.epochs > 0
    assert cfg.data.holdout_val is True
    # Both ends of the search space pass the config validation.
    for key, spec in sweeper.params.items():
        for value in _interval(spec):
            trial = _compose(*over, f"{key}={value}")
            validate_config(trial)


@pytest.mark.skipif(not HAS_SUBMITIT, reason="hydra-submitit-launcher (sweep extra) missing")
@pytest.mark.filterwarnings("ignore:.*validated against ConfigStore schema")
@pytest.mark.parametrize("gpus", [1, 4])
def test_slurm_launcher_composes_into_an_sbatch_script(tmp_path, monkeypatch, gpus):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = _compose(
        "+experiment=smoke",
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.gpus_per_node={gpus}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.output_dir={tmp_path}",
        hydra_cfg=True,
    )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    assert set(params) == set(OmegaConf.structured(SlurmQueueConf).keys()) - {"_target_"}
    assert params["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"
    # Build the sbatch script as the launcher does (a stub srun: no SLURM here).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = _make_sbatch_string(
        command="python -m gur_lightning.train",
        folder=str(tmp_path),
        **executor._executor.parameters,
    )
    for line in (
        f"#SBATCH --gpus-per-node={gpus}",
        f"#SBATCH --ntasks-per-node={gpus}",  # one process per GPU (Lightning SLURM DDP)
        "#SBATCH --time=1440",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --nodes=1",
    ):
        assert line in script


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPTUNA, reason="hydra-optuna-sweeper (sweep extra) not installed")
def test_optuna_sweep_runs_two_trials(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "gur_lightning.train",
        "+experiment=smoke",
        "+sweep=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "eval.max_trials=1",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert set(results.best_params) == {"cluster.eps", "model.memory.momentum"}
    assert 0.2 <= results.best_params["cluster.eps"] <= 0.7
    for job in ("0", "1"):
        assert "val/holdout/mAP" in json.loads(
            (tmp_path / "sweep" / job / "metrics.json").read_text()
        )


def test_csv_hparams_hold_the_whole_resolved_config(smoke_csv):
    run, cfg, _ = smoke_csv
    import yaml

    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    # Beside the module's own hyper-parameters (lr, temperature...), the run's config.
    assert hparams["lr"] == pytest.approx(cfg.model.lr)
    expected = {
        "cluster.eps": cfg.cluster.eps,
        "cluster.k1": 6,  # the smoke experiment's value
        "cluster.eps_inter_modality": cfg.cluster.eps,  # resolved, not "${.eps}"
        "data.name": "sysu",
        "data.synvi.num_ids": 24,
        "schedule.name": "smoke",
        "method": "gur",
        "schedule.epochs": 1,
        "seed": 1,
        "experiment": "smoke",
        "paths.output_dir": str(run),
        "trainer.accelerator": "cpu",
    }
    for key, value in expected.items():
        assert hparams[key] == value, key


def test_log_run_config_is_flat_except_for_wandb():
    class Recorder(Logger):
        name = "recorder"
        version = 0

        def __init__(self):
            super().__init__()
            self.params = None

        def log_hyperparams(self, params, *args, **kwargs):
            self.params = params

        def log_metrics(self, metrics, step=None):
            pass

    recorder = Recorder()
    config = {"cluster": {"eps": 0.5, "k1": 30}, "seed": 3, "trainer": {}, "tags": ["a"]}
    assert lg.log_run_config([recorder], config) == ["Recorder"]
    assert recorder.params == {
        "cluster.eps": 0.5,
        "cluster.k1": 30,
        "seed": 3,
        "trainer": {},
        "tags": ["a"],
    }
    assert lg.log_run_config(False, config) == []
