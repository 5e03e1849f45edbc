"""Vectorised re-ID ranking metrics (CMC, mAP, mINP) reproducing the official protocols.

The numbers must match published tables, so every function here reproduces the evaluation code
that GUR ships (``eval_sysu`` / ``eval_regdb`` of the AGW cross-modal baseline, docs/method.md
§13.2 and §13.3) and DEEN's ``eval_llcm``, quirks included, but without a per-query Python loop:
all queries of a chunk are ranked and scored at once with array operations.

Shared definitions (docs/method.md §13; Ye et al., "Deep Learning for Person Re-identification: A
Survey and Outlook", for mINP):

* ``distmat`` is (Q, G); smaller means closer. Each row is ranked ascending.
* A rank rule (:data:`RANK_RULES`) removes some gallery items per query (the *kept* list keeps
  the ranking order); :func:`removed_from_gallery` is the one implementation of the removals.
* A query is *valid* when its kept list holds at least one gallery item of its identity. Invalid
  queries are skipped for AP and INP and are not counted in any divisor.
* ``AP = (1 / #hits) * sum over hits at kept position k (0-based) of hits_so_far / (k + 1)``.
* ``INP = #hits / (kept position of the last hit + 1)``.
* CMC: ``cmc[k]`` is the fraction of valid queries whose first correct identity lies within the
  first ``k + 1`` entries of the ranked list. The SYSU and LLCM protocols use the list of
  *distinct identities* in order of first appearance in the kept list ("author's protocol"),
  RegDB uses the kept list itself.

Decisions (documented deviations or clarifications; each is tested):

* **Ties.** Rows are ranked with a *stable* order (equal distances keep gallery order). The
  official code used NumPy's default quicksort, whose order among exactly equal distances is
  unspecified; with real-valued features exact ties have probability zero, so the two agree on
  real data. For speed we rank with the fast default sort and re-rank stably only the rows that
  contain a tie, which yields exactly the stable order.
* **Invalid queries in the de-duplicated CMC.** The official ``eval_sysu`` appends the
  de-duplicated CMC row of *every* query, then divides the sum by the number of valid queries
  only (docs/method.md §13.2). An invalid query's row is all zeros (its identity never appears in
  the kept list), so the quirk is numerically the same as skipping it; this is what we compute.
* **``max_rank`` beyond the list length.** The official code lowers ``max_rank`` to G (with a
  printed note) and breaks or shortens the curve when a kept or de-duplicated list is shorter
  than ``max_rank``. We always return ``max_rank`` values: a valid query's first match is inside
  its list, so its cumulative row is 1 from there on, and the curve is padded with its last
  value (which is 1.0). The first ``min(max_rank, list length)`` values equal the official ones.
  A warning is logged when ``max_rank > G``, mirroring the official note.
* **Precision.** The official code sums CMC rows in float32; we count in integers and divide in
  float64 (differences below 1e-7).
* **Errors.** An empty query set, an empty gallery, NaN distances or a query set without any
  valid query raise :class:`ValueError` (the official code asserts or returns NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

ArrayLike = np.ndarray | torch.Tensor | list[int] | list[float] | tuple[int, ...]

DEFAULT_MAX_RANK = 20
"""CMC length used by all the official evaluation functions (docs/method.md §13.2)."""

SYSU_REMOVAL_QUERY_CAM = 3
"""SYSU-MM01 rule (docs/method.md §13.2): a query from this infrared camera ..."""

SYSU_REMOVAL_GALLERY_CAM = 2
"""... never sees gallery images from this visible camera, whatever their identity."""

REPORTED_RANKS: tuple[int, ...] = (1, 5, 10, 20)
"""CMC ranks reported in the GUR tables (docs/method.md §13.2: R1, R5, R10, R20)."""

_CHUNK_ELEMENTS = 1 << 21
"""Queries are processed in chunks of about this many (query, gallery) pairs to bound memory
(a few (chunk, G) int32/int64 arrays live at once: ~16 MiB each at this size)."""

Removal = Literal["none", "sysu_cam3_cam2", "same_pid_same_cam"]


@dataclass(frozen=True)
class RankRule:
    """How one official scoring function filters the gallery and builds its CMC.

    A rank rule is the scoring half of an evaluation protocol; which images query which, and
    over which trials, is the protocol table's business (:mod:`gur_lightning.data.protocols`).

    Attributes:
        name: Registry key.
        removal: Per-query gallery removal rule: ``"none"``; ``"sysu_cam3_cam2"`` (a camera-3
            query drops every camera-2 gallery item); ``"same_pid_same_cam"`` (drop gallery
            items with the query's identity *and* camera).
        dedup_cmc: Whether the CMC is computed on the identity-de-duplicated ranked list.
        description: Where the rule comes from.
    """

    name: str
    removal: Removal
    dedup_cmc: bool
    description: str


RANK_RULES: dict[str, RankRule] = {
    "sysu": RankRule(
        "sysu",
        "sysu_cam3_cam2",
        True,
        "SYSU-MM01, official eval_sysu (docs/method.md §13.2): camera-3 queries drop all camera-2 "
        "gallery items; CMC on the identity-de-duplicated list; mAP/mINP on the kept list.",
    ),
    "regdb": RankRule(
        "regdb",
        "none",
        False,
        "RegDB, official eval_regdb (docs/method.md §13.3): camera ids are fake (query 1, gallery "
        "2), so nothing is removed; standard CMC.",
    ),
    "llcm": RankRule(
        "llcm",
        "same_pid_same_cam",
        True,
        "LLCM, DEEN's eval_llcm: eval_sysu's machinery with the removal rule 'same identity "
        "and same camera as the query' (LLCM camera ids are shared across modalities).",
    ),
    "market": RankRule(
        "market",
        "same_pid_same_cam",
        False,
        "Market-1501 style single-modality evaluation (docs/method.md §13.4): drop same identity "
        "and same camera; standard CMC.",
    ),
}


def _to_numpy(name: str, value: ArrayLike) -> np.ndarray:
    """Convert a tensor, array or sequence to a NumPy array (no copy when possible)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected an array or tensor, got {type(value)!r}") from err


def _as_labels(name: str, value: ArrayLike, length: int, what: str) -> np.ndarray:
    """Return ``value`` as a 1-D int64 array of ``length`` entries, or raise a clear error."""
    arr = _to_numpy(name, value)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(
            f"{name}: expected a 1-D array of {length} entries (one per {what}), "
            f"got shape {tuple(arr.shape)}"
        )
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def resolve_rank_rule(rule: str | RankRule) -> RankRule:
    """Return the :class:`RankRule` for a registry name (or pass one through).

    Args:
        rule: A key of :data:`RANK_RULES` or a :class:`RankRule`.

    Returns:
        The rule record.

    Raises:
        ValueError: Unknown rule name.
    """
    if isinstance(rule, RankRule):
        return rule
    if rule not in RANK_RULES:
        raise ValueError(f"rule: unknown {rule!r}; expected one of {sorted(RANK_RULES)}")
    return RANK_RULES[rule]


def removed_from_gallery(
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike | None,
    g_camids: ArrayLike | None,
    rule: str | RankRule,
) -> np.ndarray:
    """Which gallery items each query may not see under a rank rule (docs/method.md §13.2).

    The one implementation of the removal rules: the ranking engine (:func:`evaluate_rank`)
    and the ranking pictures (:func:`gur_lightning.visualize.rank_gallery`) both call it.
    Arguments are in :func:`evaluate_rank`'s order.

    Args:
        q_pids: (Q,) query identities (any integer coding shared with ``g_pids``).
        g_pids: (G,) gallery identities.
        q_camids: (Q,) query cameras; may be None when the rule removes nothing.
        g_camids: (G,) gallery cameras; may be None when the rule removes nothing.
        rule: A key of :data:`RANK_RULES` or a :class:`RankRule`.

    Returns:
        (Q, G) bool, True where gallery item j is dropped from query i's list (gallery order).

    Raises:
        ValueError: Unknown rule, or no cameras for a rule that removes by camera.
    """
    removal = resolve_rank_rule(rule).removal
    q_id = _to_numpy("q_pids", q_pids).reshape(-1)
    g_id = _to_numpy("g_pids", g_pids).reshape(-1)
    if removal == "none":
        return np.zeros((q_id.shape[0], g_id.shape[0]), dtype=bool)
    if q_camids is None or g_camids is None:
        raise ValueError(f"rule {removal!r} removes gallery items by camera: cameras are required")
    q_cam = _to_numpy("q_camids", q_camids).reshape(-1)
    g_cam = _to_numpy("g_camids", g_camids).reshape(-1)
    if removal == "sysu_cam3_cam2":
        # docs/method.md §13.2: identities play no part in this rule.
        return (q_cam == SYSU_REMOVAL_QUERY_CAM)[:, None] & (g_cam == SYSU_REMOVAL_GALLERY_CAM)
    if removal == "same_pid_same_cam":
        # DEEN's eval_llcm, Market-style: the query's own identity in its own camera.
        return (q_id[:, None] == g_id) & (q_cam[:, None] == g_cam)
    raise AssertionError(f"removal rule {removal!r} has no implementation")  # a new Removal


def stable_argsort_rows(dist: np.ndarray) -> np.ndarray:
    """Rank every row ascending with a stable order, fast.

    NumPy's stable argsort is about six times slower than its default (SIMD) sort. Without
    ties every correct sort gives the same permutation, so we sort with the fast one and
    re-sort stably only the rows whose sorted values contain two equal neighbours.

    Args:
        dist: (N, G) distances without NaN.

    Returns:
        (N, G) int64 permutation per row, identical to ``np.argsort(dist, 1, kind="stable")``.
    """
    order = np.argsort(dist, axis=1)
    if dist.shape[1] < 2:
        return order
    # Sorting values again is cheaper than gathering them through ``order``.
    ranked = np.sort(dist, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(dist[tied], axis=1, kind="stable")
    return order


@dataclass(frozen=True)
class _Gallery:
    """Per-evaluation gallery tables shared by all query chunks.

    Attributes:
        codes: (G,) int64 dense identity codes (index into ``uniq``).
        uniq: (P,) sorted distinct gallery identities.
        cams: (G,) int64 cameras, or None when the rule ignores cameras.
    """

    codes: np.ndarray
    uniq: np.ndarray
    cams: np.ndarray | None


def _rank_chunk(
    dist: np.ndarray,
    q_codes: np.ndarray,
    q_cams: np.ndarray | None,
    gallery: _Gallery,
    rule: RankRule,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score one chunk of queries at once (docs/method.md §13.2/§13.3, vectorised).

    Args:
        dist: (C, G) distances of C queries.
        q_codes: (C,) query identity codes in ``gallery.uniq``; -1 for identities absent
            from the gallery.
        q_cams: (C,) query cameras, or None when the rule removes nothing.
        gallery: Gallery tables.
        rule: The rank rule.

    Returns:
        ``(ap, inp, cmc_rank, valid)``, each (C,): average precision, INP, the 0-based rank
        entering the CMC (first kept hit in the kept list, or its identity's rank in the
        de-duplicated list), and validity. Invalid entries hold 0 / -1.
    """
    num_q, num_g = dist.shape
    order = stable_argsort_rows(dist)
    ranked_codes = gallery.codes[order]
    hit = ranked_codes == q_codes[:, None]
    keep = None
    if rule.removal != "none":
        # Identity codes stand in for identities: a query code of -1 (absent from the
        # gallery) equals no gallery code, as its identity equals no gallery identity.
        removed = removed_from_gallery(q_codes, gallery.codes, q_cams, gallery.cams, rule)
        keep = ~np.take_along_axis(removed, order, axis=1)
        hit &= keep

    num_hits = hit.sum(axis=1)
    valid = num_hits > 0
    # Kept hits in row-major order: each query's hits are contiguous and in ranked order, so
    # the first / last hit of query i sit at ``first_h[i]`` / ``last_h[i]``.
    rows, cols = np.nonzero(hit)
    hit_kept_pos: np.ndarray
    if keep is None:
        hit_kept_pos = cols
    else:
        # Position in the kept list = ranked position - removed items ranked before it.
        hit_kept_pos = (np.cumsum(keep, axis=1, dtype=np.int32) - 1)[rows, cols]
    last_h = np.cumsum(num_hits) - 1
    first_h = last_h - num_hits + 1
    # Hits so far at each hit: its 0-based index among the query's hits, plus one.
    hits_so_far = np.arange(rows.shape[0], dtype=np.int64) - np.repeat(first_h, num_hits) + 1
    precision = hits_so_far / (hit_kept_pos + 1.0)
    sums = np.bincount(rows, weights=precision, minlength=num_q)
    ap = np.zeros(num_q, dtype=np.float64)
    inp = np.zeros(num_q, dtype=np.float64)
    cmc_rank = np.full(num_q, -1, dtype=np.int64)
    ap[valid] = sums[valid] / num_hits[valid]
    inp[valid] = num_hits[valid] / (hit_kept_pos[last_h[valid]] + 1.0)

    if not rule.dedup_cmc:
        cmc_rank[valid] = hit_kept_pos[first_h[valid]]
        return ap, inp, cmc_rank, valid

    # De-duplicated CMC: the query's identity sits at index r of the distinct-identity list,
    # where r = number of distinct identities among the kept items ranked before its first
    # kept hit. Mark those (query, identity) pairs in a (C, P) table; only the prefixes before
    # each first hit are visited, not the whole ranking.
    valid_rows = np.flatnonzero(valid)
    prefix_len = cols[first_h[valid]]
    p_rows = np.repeat(valid_rows, prefix_len)
    p_cols = np.arange(p_rows.shape[0]) - np.repeat(np.cumsum(prefix_len) - prefix_len, prefix_len)
    if keep is not None:
        kept = keep[p_rows, p_cols]
        p_rows, p_cols = p_rows[kept], p_cols[kept]
    seen = np.zeros((num_q, gallery.uniq.shape[0]), dtype=bool)
    seen[p_rows, ranked_codes[p_rows, p_cols]] = True
    cmc_rank[valid] = seen[valid].sum(axis=1)
    return ap, inp, cmc_rank, valid


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike | None = None,
    g_camids: ArrayLike | None = None,
    rule: str | RankRule = "sysu",
    max_rank: int = DEFAULT_MAX_RANK,
    *,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Rank a gallery for every query and compute CMC, mAP and mINP (docs/method.md §13).

    Args:
        distmat: (Q, G) distances, smaller = closer (NumPy array or torch tensor).
        q_pids: (Q,) query identities.
        g_pids: (G,) gallery identities.
        q_camids: (Q,) query cameras; required when the rule removes by camera.
        g_camids: (G,) gallery cameras; same.
        rule: The rank rule: ``"sysu"``, ``"regdb"``, ``"llcm"``, ``"market"`` or a
            :class:`RankRule`. Which data set setting uses which rule is the protocol
            table's choice (:data:`gur_lightning.data.protocols.PROTOCOLS`).
        max_rank: Length of the returned CMC curve (see the module notes for ``max_rank > G``).
        chunk_size: Queries per chunk; default keeps about 2M (query, gallery) pairs per chunk.

    Returns:
        Dict with ``cmc`` ((max_rank,) float64 in [0, 1]), ``mAP`` and ``mINP`` (floats in
        [0, 1]), ``num_valid`` (int), and per-query ``AP``, ``INP`` ((Q,) float64, NaN for
        invalid queries), ``cmc_rank`` ((Q,) int64 0-based rank entering the CMC, -1 for
        invalid) and ``valid`` ((Q,) bool).

    Raises:
        ValueError: Bad shapes or labels, NaN distances, missing cameras, empty query set or
            gallery, ``max_rank < 1``, or no query with a valid match.
    """
    proto = resolve_rank_rule(rule)
    dist = _to_numpy("distmat", distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (Q, G) matrix, got shape {tuple(dist.shape)}")
    num_q, num_g = dist.shape
    if num_q == 0:
        raise ValueError("distmat: the query set is empty (Q = 0)")
    if num_g == 0:
        raise ValueError("distmat: the gallery is empty (G = 0); nothing can be ranked")
    if dist.dtype.kind not in "fiu":
        raise ValueError(f"distmat: expected real numbers, got dtype {dist.dtype}")
    if dist.dtype.kind == "f" and np.isnan(dist).any():
        raise ValueError("distmat: contains NaN; distances must be comparable numbers")
    if max_rank < 1:
        raise ValueError(f"max_rank: expected a positive integer, got {max_rank}")
    qp = _as_labels("q_pids", q_pids, num_q, "query row of distmat")
    gp = _as_labels("g_pids", g_pids, num_g, "gallery column of distmat")
    qc = gc = None
    if proto.removal != "none":
        if q_camids is None or g_camids is None:
            raise ValueError(
                f"rule {proto.name!r} removes gallery items by camera: "
                "q_camids and g_camids are required"
            )
        qc = _as_labels("q_camids", q_camids, num_q, "query row of distmat")
        gc = _as_labels("g_camids", g_camids, num_g, "gallery column of distmat")
    if max_rank > num_g:
        log.warning(
            "max_rank=%d exceeds the gallery size %d; CMC values past rank %d are padded "
            "with the last value",
            max_rank,
            num_g,
            num_g,
        )

    # Dense identity codes: comparisons and the (C, P) table work on 0..P-1.
    uniq, g_codes = np.unique(gp, return_inverse=True)
    gallery = _Gallery(codes=g_codes.reshape(-1), uniq=uniq, cams=gc)
    q_codes = np.searchsorted(uniq, qp).clip(0, uniq.shape[0] - 1)
    q_codes = np.where(uniq[q_codes] == qp, q_codes, -1)

    step = chunk_size or max(1, _CHUNK_ELEMENTS // num_g)
    ap = np.empty(num_q, dtype=np.float64)
    inp = np.empty(num_q, dtype=np.float64)
    cmc_rank = np.empty(num_q, dtype=np.int64)
    valid = np.empty(num_q, dtype=bool)
    for lo in range(0, num_q, step):
        sl = slice(lo, min(lo + step, num_q))
        ap[sl], inp[sl], cmc_rank[sl], valid[sl] = _rank_chunk(
            dist[sl], q_codes[sl], None if qc is None else qc[sl], gallery, proto
        )

    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a correct match in its (filtered) gallery; "
            "check that query and gallery identities overlap"
        )
    # cmc[k] = #valid queries with cmc_rank <= k, over #valid (module notes: counts past the
    # list length stay at the last value, i.e. 1.0).
    counts = np.bincount(np.minimum(cmc_rank[valid], max_rank), minlength=max_rank + 1)
    cmc = np.cumsum(counts[:max_rank]) / num_valid
    ap[~valid] = np.nan
    inp[~valid] = np.nan
    return {
        "cmc": cmc,
        "mAP": float(np.mean(ap[valid])),
        "mINP": float(np.mean(inp[valid])),
        "num_valid": num_valid,
        "AP": ap,
        "INP": inp,
        "cmc_rank": cmc_rank,
        "valid": valid,
    }


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """Keep the three headline entries of :func:`evaluate_rank`'s result."""
    return {"cmc": result["cmc"], "mAP": result["mAP"], "mINP": result["mINP"]}


def evaluate_sysu(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = DEFAULT_MAX_RANK,
) -> dict[str, Any]:
    """SYSU-MM01 evaluation exactly as the official ``eval_sysu`` (docs/method.md §13.2).

    A camera-3 query drops every camera-2 gallery item (any identity); the CMC uses the
    identity-de-duplicated ranking, mAP and mINP the kept (non-de-duplicated) list.

    Args:
        distmat: (Q, G) distances, smaller = closer.
        q_pids: (Q,) query identities.
        g_pids: (G,) gallery identities.
        q_camids: (Q,) query cameras (SYSU numbering, 1-6).
        g_camids: (G,) gallery cameras.
        max_rank: CMC length.

    Returns:
        ``{"cmc": (max_rank,) array, "mAP": float, "mINP": float}``, all in [0, 1].
    """
    return _summary(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, "sysu", max_rank))


def evaluate_regdb(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    max_rank: int = DEFAULT_MAX_RANK,
) -> dict[str, Any]:
    """RegDB evaluation exactly as the official ``eval_regdb`` (docs/method.md §13.3).

    Nothing is removed and the CMC is the standard one (no identity de-duplication).

    Args:
        distmat: (Q, G) distances, smaller = closer.
        q_pids: (Q,) query identities.
        g_pids: (G,) gallery identities.
        max_rank: CMC length.

    Returns:
        ``{"cmc": (max_rank,) array, "mAP": float, "mINP": float}``, all in [0, 1].
    """
    return _summary(evaluate_rank(distmat, q_pids, g_pids, None, None, "regdb", max_rank))


def evaluate_llcm(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = DEFAULT_MAX_RANK,
) -> dict[str, Any]:
    """LLCM evaluation as DEEN's ``eval_llcm``.

    ``eval_sysu``'s machinery (de-duplicated CMC, mAP/mINP on the kept list) with LLCM's
    removal rule: drop gallery items with the query's identity *and* camera (LLCM's camera ids
    are shared by both modalities, so this removes same-camera true matches).

    Args:
        distmat: (Q, G) distances, smaller = closer.
        q_pids: (Q,) query identities.
        g_pids: (G,) gallery identities.
        q_camids: (Q,) query cameras.
        g_camids: (G,) gallery cameras.
        max_rank: CMC length.

    Returns:
        ``{"cmc": (max_rank,) array, "mAP": float, "mINP": float}``, all in [0, 1].
    """
    return _summary(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, "llcm", max_rank))


def cosine_distance(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Distance used by the official evaluation: the negated cosine similarity (§13.1).

    The reference passes ``distmat = -(q @ g.T)`` of L2-normalised features. We keep exactly
    that (rather than ``1 - cos``, which ranks the same in exact arithmetic) because ``1 - x``
    rounds and can merge distinct similarities into ties, whereas negation is exact.

    Args:
        query_feats: (Q, D) features.
        gallery_feats: (G, D) features.
        normalize: L2-normalise both sides first (the reference features are already unit
            length; normalising again is harmless).

    Returns:
        (Q, G) tensor in [-1, 1] for unit features; smaller = closer.

    Raises:
        ValueError: Inputs that are not 2-D or whose feature sizes differ.
    """
    if query_feats.ndim != 2 or gallery_feats.ndim != 2:
        raise ValueError(
            "cosine_distance: expected 2-D (N, D) features, got shapes "
            f"{tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}"
        )
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            "cosine_distance: feature sizes differ: query D="
            f"{query_feats.shape[1]}, gallery D={gallery_feats.shape[1]}"
        )
    if normalize:
        query_feats = torch.nn.functional.normalize(query_feats, dim=1)
        gallery_feats = torch.nn.functional.normalize(gallery_feats, dim=1)
    return -(query_feats @ gallery_feats.T)
