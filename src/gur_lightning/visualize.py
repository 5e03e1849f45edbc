"""Dashboard pictures drawn with PIL: ranking lists and pseudo-label quality curves.

Two kinds of picture:

* **Ranking lists**: for a few queries of a test protocol, the query image and its top-k gallery
  images after the protocol's gallery removal rule (docs/method.md §13.2-§13.3), each gallery image
  framed green when it shows the query's identity and red otherwise.
* **Pseudo-label quality curves**: ARI / NMI and the number of clusters of every clustering of a
  stage against the phase index, read from ``Reclustering.history`` (docs/method.md §10: one
  clustering before every phase).

PIL is a core dependency, so the pictures need nothing extra (matplotlib is not required). The
functions here are pure: they take features, samples or history records and return
``PIL.Image.Image`` objects; :mod:`gur_lightning.callbacks.pictures` decides when to draw them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gur_lightning.data.samples import Sample
from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "CORRECT_COLOUR",
    "QUERY_COLOUR",
    "WRONG_COLOUR",
    "Ranking",
    "cluster_quality_figures",
    "draw_ranking",
    "line_chart",
    "nice_ticks",
    "rank_gallery",
    "save_png",
    "select_queries",
]

#: Frame colours of the ranking pictures (RGB).
CORRECT_COLOUR: tuple[int, int, int] = (0, 170, 0)
WRONG_COLOUR: tuple[int, int, int] = (220, 0, 0)
QUERY_COLOUR: tuple[int, int, int] = (0, 90, 230)
#: Line colours of the charts, one per series, in order (a colour-blind-safe palette).
SERIES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (120, 120, 120),
    (0, 0, 0),
)
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_GRID = (225, 225, 225)
_PLACEHOLDER = (200, 200, 200)
#: Default tile size of a ranking picture: person crops are about twice as tall as wide.
TILE_WIDTH: int = 64
TILE_HEIGHT: int = 128
#: Frame thickness around each tile, in pixels.
FRAME: int = 4
#: Default chart size (width, height) in pixels.
CHART_SIZE: tuple[int, int] = (640, 400)
_FONT_SIZE = 12
#: Blank border of the pictures and gap between their cells, in pixels.
MARGIN: int = 8


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font (scalable when FreeType is available, bitmap otherwise)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


# ------------------------------------------------------------------------------------ rankings


@dataclass(frozen=True)
class Ranking:
    """One query's ranked gallery list (the first ``k`` kept items).

    Attributes:
        query: The query sample.
        gallery: The top-k gallery samples, best first, after the protocol's removal rule.
        correct: Per gallery item, whether it shows the query's identity.
        distances: Per gallery item, the cosine distance ``-q·g`` used for ranking.
    """

    query: Sample
    gallery: tuple[Sample, ...]
    correct: tuple[bool, ...]
    distances: tuple[float, ...]


def rank_gallery(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    queries: Sequence[Sample],
    gallery: Sequence[Sample],
    *,
    protocol: str,
    topk: int = 10,
) -> list[Ranking]:
    """Rank the gallery for each query as the evaluation does (docs/method.md §13.1-§13.3).

    Distances are ``-q·g`` of the L2-normalised test features, sorted stably (ties keep gallery
    order, as :func:`gur_lightning.metrics.functional.stable_argsort_rows`), and the protocol's
    rank rule drops gallery items (:func:`gur_lightning.metrics.functional.removed_from_gallery`,
    on the labels :meth:`gur_lightning.data.protocols.EvalProtocol.rule_inputs` gives, as the
    metrics do) before the top ``topk`` are taken.

    Args:
        query_features: (Q, D) L2-normalised query features.
        gallery_features: (G, D) L2-normalised gallery features.
        queries: The Q query samples, aligned with ``query_features``.
        gallery: The G gallery samples, aligned with ``gallery_features``.
        protocol: A name of the protocol table (``sysu_all``, ``regdb_v2t``, ``llcm_v2i``...):
            picks the removal rule.
        topk: Number of gallery items kept per query (fewer when the gallery is smaller).

    Returns:
        One :class:`Ranking` per query, in query order.

    Raises:
        UnknownProtocolError: A protocol name that is not in the table.
        ValueError: On mismatched lengths, feature dimensions or a non-positive ``topk``.
    """
    from gur_lightning.data.protocols import get_protocol
    from gur_lightning.metrics.functional import (
        cosine_distance,
        removed_from_gallery,
        stable_argsort_rows,
    )

    entry = get_protocol(protocol)  # fail early on an unknown protocol
    if topk < 1:
        raise ValueError(f"rank_gallery: topk must be >= 1, got {topk}")
    if query_features.ndim != 2 or gallery_features.ndim != 2:
        raise ValueError(
            "rank_gallery: features must be (N, D) matrices, got shapes "
            f"{tuple(query_features.shape)} and {tuple(gallery_features.shape)}"
        )
    if query_features.shape[0] != len(queries) or gallery_features.shape[0] != len(gallery):
        raise ValueError(
            f"rank_gallery: {query_features.shape[0]} query features for {len(queries)} queries, "
            f"{gallery_features.shape[0]} gallery features for {len(gallery)} gallery samples"
        )
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(
            f"rank_gallery: query features are {query_features.shape[1]}-d, gallery features "
            f"{gallery_features.shape[1]}-d"
        )
    dist = (
        cosine_distance(query_features.float(), gallery_features.float(), normalize=False)
        .cpu()
        .numpy()
    )
    order = stable_argsort_rows(dist) if len(gallery) else np.zeros((len(queries), 0), int)
    removed = removed_from_gallery(*entry.rule_inputs(queries, gallery), rule=entry.rule)
    out: list[Ranking] = []
    for row, query in enumerate(queries):
        ranked = [int(j) for j in order[row] if not removed[row, j]][:topk]
        out.append(
            Ranking(
                query=query,
                gallery=tuple(gallery[j] for j in ranked),
                correct=tuple(gallery[j].pid == query.pid for j in ranked),
                distances=tuple(float(dist[row, j]) for j in ranked),
            )
        )
    return out


def select_queries(queries: Sequence[Sample], num: int) -> list[int]:
    """Indices of ``num`` queries spread evenly over the list, one per identity where possible.

    Deterministic, so the pictures of two runs show the same queries.

    Args:
        queries: The query list of a protocol.
        num: How many to pick (all when the list is shorter).

    Returns:
        Sorted indices into ``queries``.
    """
    if num <= 0 or not queries:
        return []
    # The first image of each identity, then spread evenly over those identities.
    first: dict[int, int] = {}
    for i, s in enumerate(queries):
        first.setdefault(s.pid, i)
    pool = sorted(first.values())
    if len(pool) < num:
        pool = list(range(len(queries)))
    if len(pool) <= num:
        return pool
    picks = np.linspace(0, len(pool) - 1, num).round().astype(int)
    return sorted({pool[p] for p in picks})


def _tile(path: str, width: int, height: int) -> Image.Image:
    """The image at ``path`` resized to a tile; a grey placeholder when it cannot be read."""
    from gur_lightning.data.readers import ImageReadError, read_image

    try:
        return read_image(path).resize((width, height), Image.Resampling.BILINEAR)
    except ImageReadError as err:
        # A picture is a diagnostic: one unreadable file must not end a finished run.
        log.warning("ranking picture: %s; drawing a placeholder", err)
        return Image.new("RGB", (width, height), _PLACEHOLDER)


def draw_ranking(
    rankings: Sequence[Ranking],
    *,
    title: str = "",
    tile_width: int = TILE_WIDTH,
    tile_height: int = TILE_HEIGHT,
) -> Image.Image:
    """Draw one row per query: the query (blue frame), then its ranked gallery list.

    Gallery tiles are framed green (same identity as the query) or red (another identity) and
    captioned with their rank. Layout, for row ``r`` and gallery position ``j`` (0-based):
    the tile's frame starts at ``x = M + (j + 1) * (w + 2F + M) + M``, ``y = top + r * (h + 2F +
    caption + M)`` with ``M`` the margin, ``F`` the frame width and ``w, h`` the tile size.

    Args:
        rankings: The rows to draw (:func:`rank_gallery`).
        title: Text drawn at the top.
        tile_width: Width of each image tile in pixels.
        tile_height: Height of each image tile in pixels.

    Returns:
        An RGB image.

    Raises:
        ValueError: If ``rankings`` is empty or a tile size is not positive.
    """
    if not rankings:
        raise ValueError("draw_ranking: no rankings to draw")
    if tile_width < 1 or tile_height < 1:
        raise ValueError(
            f"draw_ranking: tile size must be positive, got {tile_width}x{tile_height}"
        )
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    caption = _text_size(probe, "Q 10", font)[1] + 4
    cell_w = tile_width + 2 * FRAME + MARGIN
    cell_h = tile_height + 2 * FRAME + caption + MARGIN
    top = MARGIN + (caption + MARGIN if title else 0)
    columns = 1 + max(len(r.gallery) for r in rankings)
    # One extra margin separates the query column from the gallery columns.
    width = MARGIN + columns * cell_w + MARGIN
    height = top + len(rankings) * cell_h
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, MARGIN), title, fill=_INK, font=font)
    for r, ranking in enumerate(rankings):
        y = top + r * cell_h
        _framed_tile(
            canvas, draw, ranking.query.path, MARGIN, y, tile_width, tile_height, QUERY_COLOUR
        )
        draw.text(
            (MARGIN, y + tile_height + 2 * FRAME + 1),
            f"Q id {ranking.query.pid}",
            fill=_INK,
            font=font,
        )
        for j, (sample, ok) in enumerate(zip(ranking.gallery, ranking.correct, strict=True)):
            x = MARGIN + (j + 1) * cell_w + MARGIN
            colour = CORRECT_COLOUR if ok else WRONG_COLOUR
            _framed_tile(canvas, draw, sample.path, x, y, tile_width, tile_height, colour)
            draw.text((x, y + tile_height + 2 * FRAME + 1), f"{j + 1}", fill=colour, font=font)
    return canvas


def _framed_tile(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    path: str,
    x: int,
    y: int,
    width: int,
    height: int,
    colour: tuple[int, int, int],
) -> None:
    draw.rectangle((x, y, x + width + 2 * FRAME - 1, y + height + 2 * FRAME - 1), fill=colour)
    canvas.paste(_tile(path, width, height), (x + FRAME, y + FRAME))


# -------------------------------------------------------------------------------------- charts


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``[lo, hi]``.

    Args:
        lo: Lower end of the data range.
        hi: Upper end (``hi == lo`` is widened by one unit).
        count: Approximate number of intervals.

    Returns:
        Increasing tick values; the first is <= ``lo`` and the last >= ``hi``.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_ticks: the range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw - 1e-12)
    start = math.floor(lo / step + 1e-9) * step
    ticks: list[float] = []
    value = start
    while value < hi + step * 0.5 and len(ticks) < 100:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:  # pragma: no cover - the loop always passes hi
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class _Axes:
    """Data-to-pixel mapping of a chart's plot area (pixel y grows downwards)."""

    left: int
    top: int
    right: int
    bottom: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def px(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.x_lo) / (self.x_hi - self.x_lo)
        fy = (y - self.y_lo) / (self.y_hi - self.y_lo)
        return (
            self.left + fx * (self.right - self.left),
            self.bottom - fy * (self.bottom - self.top),
        )


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    y_range: tuple[float, float] | None = None,
    size: tuple[int, int] = CHART_SIZE,
) -> Image.Image:
    """A line chart with point markers, axis ticks, grid and legend.

    The plot area spans the x range of the data exactly (integer ticks when every x is an
    integer, e.g. phase indices) and ``y_range`` (or round ticks around the data).
    Non-finite points are left out.

    Args:
        series: Legend name -> ``(x, y)`` points, drawn in order with
            :data:`SERIES_COLOURS` (cycled).
        title: Text above the plot.
        xlabel: Text under the x axis.
        ylabel: Text above the y axis.
        y_range: Fixed y limits (e.g. ``(0, 1)`` for ARI/NMI); None fits the data.
        size: Image (width, height) in pixels.

    Returns:
        An RGB image of ``size``.

    Raises:
        ValueError: If no series has a finite point, or ``y_range`` is empty.
    """
    clean = {
        name: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        for name, pts in series.items()
    }
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        raise ValueError(f"line_chart {title!r}: no finite point to draw")
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    if y_range is not None:
        if not y_range[1] > y_range[0]:
            raise ValueError(f"line_chart {title!r}: empty y_range {y_range}")
        y_ticks = nice_ticks(*y_range)
        y_ticks = [t for t in y_ticks if y_range[0] - 1e-9 <= t <= y_range[1] + 1e-9]
        y_lo, y_hi = y_range
    else:
        y_ticks = nice_ticks(min(ys), max(ys))
        y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if all(float(x).is_integer() for x in xs):
        stride = max(1, math.ceil((x_hi - x_lo) / 10))
        x_ticks = [float(v) for v in range(int(x_lo), int(x_hi) + 1, stride)]
    else:
        x_ticks = [t for t in nice_ticks(x_lo, x_hi) if x_lo <= t <= x_hi]

    width, height = size
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    text_h = _text_size(draw, "0", font)[1]
    label_w = max(_text_size(draw, _tick_label(t), font)[0] for t in y_ticks)
    legend_w = max(_text_size(draw, name, font)[0] for name in clean) + 30
    axes = _Axes(
        left=MARGIN + label_w + 6,
        # Title and y label above the plot, and room for half of the top tick label.
        top=MARGIN + 2 * (text_h + 6) + text_h,
        right=width - MARGIN - legend_w - MARGIN,
        bottom=height - MARGIN - 2 * (text_h + 6),
        x_lo=x_lo,
        x_hi=x_hi,
        y_lo=y_lo,
        y_hi=y_hi,
    )
    if axes.right - axes.left < 20 or axes.bottom - axes.top < 20:
        raise ValueError(f"line_chart {title!r}: size {size} leaves no room for the plot")
    if title:
        draw.text((MARGIN, MARGIN), title, fill=_INK, font=font)
    if ylabel:
        draw.text((MARGIN, MARGIN + text_h + 6), ylabel, fill=_INK, font=font)
    for t in y_ticks:
        _, py = axes.px(x_lo, t)
        draw.line((axes.left, py, axes.right, py), fill=_GRID)
        tw, _ = _text_size(draw, _tick_label(t), font)
        draw.text((axes.left - 6 - tw, py - text_h / 2 - 1), _tick_label(t), fill=_INK, font=font)
    for t in x_ticks:
        px, _ = axes.px(t, y_lo)
        draw.line((px, axes.bottom, px, axes.bottom + 4), fill=_INK)
        tw, _ = _text_size(draw, _tick_label(t), font)
        draw.text((px - tw / 2, axes.bottom + 6), _tick_label(t), fill=_INK, font=font)
    draw.rectangle((axes.left, axes.top, axes.right, axes.bottom), outline=_INK)
    if xlabel:
        tw, _ = _text_size(draw, xlabel, font)
        draw.text(
            ((axes.left + axes.right - tw) / 2, height - MARGIN - text_h - 2),
            xlabel,
            fill=_INK,
            font=font,
        )
    for k, (name, pts) in enumerate(clean.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        pixels = [axes.px(x, y) for x, y in sorted(pts)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        ly = axes.top + k * (text_h + 8) + 4
        lx = axes.right + MARGIN
        draw.line((lx, ly + text_h / 2, lx + 20, ly + text_h / 2), fill=colour, width=3)
        draw.text((lx + 26, ly), name, fill=_INK, font=font)
    return canvas


#: History keys of the per-stage statistics drawn, and their legend prefixes: joint clustering
#: (stage 3), per modality, and the visible labels after CMLU (stage 2, docs/method.md §9).
_SCOPES: tuple[tuple[str, str], ...] = (
    ("", "joint"),
    ("visible/", "visible"),
    ("infrared/", "infrared"),
    ("visible_cmlu/", "visible after CMLU"),
)


def cluster_quality_figures(
    history: Sequence[Mapping[str, Any]], *, size: tuple[int, int] = CHART_SIZE
) -> dict[str, Image.Image]:
    """Pseudo-label quality curves per stage from ``Reclustering.history``.

    For every stage that has at least one successful clustering, two charts against the phase
    index: ``cluster_quality/<stage>`` (ARI and NMI against the ground-truth identities, in
    [0, 1]; drawn only when the records carry them) and ``cluster_count/<stage>`` (number of
    clusters). Skipped phases have no statistics and leave gaps.

    Args:
        history: Records with ``phase``, ``stage``, ``skipped`` and statistics such as
            ``visible/ari``, ``visible/nmi``, ``visible/num_clusters``, ``ari``,
            ``num_clusters`` (see :class:`gur_lightning.callbacks.recluster.Reclustering`).
        size: Chart size in pixels.

    Returns:
        Picture name -> image, in stage order.
    """
    from gur_lightning.schedule import STAGES

    figures: dict[str, Image.Image] = {}
    for stage in STAGES:
        records = [r for r in history if r.get("stage") == stage and not r.get("skipped")]
        if not records:
            continue
        quality: dict[str, list[tuple[float, float]]] = {}
        counts: dict[str, list[tuple[float, float]]] = {}
        for prefix, name in _SCOPES:
            for metric in ("ari", "nmi"):
                pts = [(r["phase"], r[prefix + metric]) for r in records if prefix + metric in r]
                if pts:
                    quality[f"{name} {metric.upper()}"] = pts
            pts = [
                (r["phase"], r[prefix + "num_clusters"])
                for r in records
                if prefix + "num_clusters" in r
            ]
            if pts:
                counts[name] = pts
        label = stage.replace("_", "-")
        if quality:
            figures[f"cluster_quality/{stage}"] = line_chart(
                quality,
                title=f"pseudo-label quality, {label} stage",
                xlabel="phase index",
                ylabel="ARI / NMI",
                y_range=(0.0, 1.0),
                size=size,
            )
        if counts:
            figures[f"cluster_count/{stage}"] = line_chart(
                counts,
                title=f"number of clusters, {label} stage",
                xlabel="phase index",
                ylabel="clusters",
                size=size,
            )
    return figures


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as a PNG, creating parent folders; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return out
