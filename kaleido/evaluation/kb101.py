"""The KB-101 retrieval protocol (DESIGN.md "Evaluation protocol KB-101"): seeded candidate sets.

Each query product gets 101 candidates: itself (the positive, column 0) and 100 negatives,
drawn as hard as the catalog allows:

1. from the query's own subcategory (without replacement),
2. when the subcategory is too small, filled from the same category (other subcategories),
3. when the category is too small as well, filled from any other product.

The three tiers are disjoint, so a negative is never the query and never repeated. The
result holds product indices only: in image-to-text retrieval (ITR) a candidate ``j`` stands
for product ``j``'s text, in text-to-image retrieval (TIR) for its image, so one draw serves
both directions. Negatives are stored tier by tier (the column order means nothing for the
ranks, which count ties pessimistically, see :func:`kaleido.evaluation.ranks_from_scores`).

Labels are compared as strings; ``""`` (and ``None`` / NaN, read as ``""``) is the label
"unknown" and is treated as a label of its own, so products of unknown subcategory are each
other's "same subcategory" negatives. Clean the labels first when that is not wanted.

Everything is a pure function of the labels and :class:`KB101Config`: draw ``d`` uses
``np.random.default_rng([seed, d])``, so draws are reproducible one by one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class KB101Config:
    """Settings of the KB-101 protocol (the paper: 1,000 queries, 1 + 100 candidates, 5 draws)."""

    queries: int = 1000  # queries per draw; capped at the number of products (the cap is reported)
    negatives: int = 100  # negatives per query (1 positive + 100 negatives = 101 candidates)
    draws: int = 5  # seeded draws, averaged by retrieval_summary
    seed: int = 0  # draw d uses np.random.default_rng([seed, d])


@dataclass
class RetrievalDraw:
    """One seeded draw of KB-101 queries and their candidate sets.

    Attributes:
        queries: (Q,) product indices of the queries.
        candidates: (Q, 1 + N) product indices; column 0 is the positive (the query itself),
            columns 1.. the negatives, same-subcategory ones first, then the fill-ins.
        from_subcategory: negatives drawn from the query's own subcategory (total over queries).
        filled_from_category: negatives filled from the parent category (subcategory too small).
        filled_from_any: negatives filled from anywhere (category too small as well).
        queries_requested: ``KB101Config.queries``; larger than Q when the catalog capped it.
    """

    queries: np.ndarray
    candidates: np.ndarray
    from_subcategory: int
    filled_from_category: int
    filled_from_any: int
    queries_requested: int = 0


def _label_codes(labels: Sequence, name: str) -> np.ndarray:
    """(N,) integer codes of string labels; None / NaN / "" all become the label ""."""
    def clean(x) -> str:
        if x is None or (isinstance(x, float) and x != x):
            return ""
        return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)

    try:
        values = list(labels)
    except TypeError as err:
        raise ValueError(f"{name} must be a sequence of per-product labels, "
                         f"got {type(labels).__name__}") from err
    if values and isinstance(values[0], (list, tuple, np.ndarray)):
        raise ValueError(f"{name} must be one label per product (1-D), got nested sequences")
    strings = np.array([clean(x) for x in values], dtype=str)
    return np.unique(strings, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _groups(codes: np.ndarray) -> list[np.ndarray]:
    """Sorted member indices of each code (codes are 0..K-1, all present)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


class _CatalogIndex:
    """Per-label index arrays, built once and shared by all draws (no O(N^2) anywhere)."""

    def __init__(self, subcategories: Sequence, categories: Sequence):
        self.sub = _label_codes(subcategories, "subcategories")
        self.cat = _label_codes(categories, "categories")
        if len(self.sub) != len(self.cat):
            raise ValueError(f"subcategories and categories must have one label per product; "
                             f"got {len(self.sub)} and {len(self.cat)}")
        self.n = len(self.sub)
        self.sub_groups = _groups(self.sub) if self.n else []
        self.cat_groups = _groups(self.cat) if self.n else []
        self._cat_other: dict[tuple[int, int], np.ndarray] = {}

    def category_others(self, c: int, s: int) -> np.ndarray:
        """Sorted members of category ``c`` whose subcategory is not ``s``."""
        key = (c, s)
        if key not in self._cat_other:
            members = self.cat_groups[c]
            self._cat_other[key] = members[self.sub[members] != s]
        return self._cat_other[key]


def _check_config(cfg: KB101Config, n_products: int) -> None:
    for field in ("queries", "negatives", "draws"):
        if getattr(cfg, field) < 1:
            raise ValueError(f"KB101Config.{field} must be at least 1, got {getattr(cfg, field)}")
    if cfg.seed < 0:
        raise ValueError(f"KB101Config.seed must be non-negative, got {cfg.seed}")
    if n_products < cfg.negatives + 1:
        raise ValueError(
            f"the catalog has {n_products} products, too few for 1 positive + {cfg.negatives} "
            f"negatives per query; lower KB101Config.negatives to at most {max(n_products - 1, 0)}")


def _sample_excluding(rng: np.random.Generator, n: int, excluded: np.ndarray,
                      size: int) -> np.ndarray:
    """``size`` distinct integers of ``range(n)`` outside the sorted array ``excluded``."""
    k = rng.choice(n - len(excluded), size, replace=False)
    # the k-th (0-based) allowed value is k + #excluded below it; excluded[i] - i is the
    # number of allowed values below excluded[i]
    return k + np.searchsorted(excluded - np.arange(len(excluded)), k, side="right")


def _draw(index: _CatalogIndex, cfg: KB101Config, draw: int) -> RetrievalDraw:
    if draw < 0:
        raise ValueError(f"draw index must be non-negative, got {draw}")
    n_neg = cfg.negatives
    rng = np.random.default_rng([cfg.seed, draw])
    n_queries = min(cfg.queries, index.n)
    queries = rng.choice(index.n, n_queries, replace=False).astype(np.int64)
    candidates = np.empty((n_queries, 1 + n_neg), dtype=np.int64)  # (Q, 1 + N)
    candidates[:, 0] = queries
    n_sub = n_cat = n_any = 0
    for row, q in enumerate(queries):
        s, c = index.sub[q], index.cat[q]
        group = index.sub_groups[s]  # sorted, contains q
        n_same = len(group) - 1
        if n_same >= n_neg:
            k = rng.choice(n_same, n_neg, replace=False)
            k += k >= np.searchsorted(group, q)  # skip the query's own slot
            candidates[row, 1:] = group[k]
            n_sub += n_neg
            continue
        same = group[group != q]
        others = index.category_others(c, s)
        need = n_neg - n_same
        if len(others) >= need:
            fill_cat = others[rng.choice(len(others), need, replace=False)]
            fill_any = np.empty(0, dtype=np.int64)
        else:
            fill_cat = others
            excluded = np.union1d(group, others)  # sorted; q is in group
            fill_any = _sample_excluding(rng, index.n, excluded, need - len(others))
        candidates[row, 1:] = np.concatenate([same, fill_cat, fill_any])
        n_sub += n_same
        n_cat += len(fill_cat)
        n_any += len(fill_any)
    return RetrievalDraw(queries=queries, candidates=candidates, from_subcategory=int(n_sub),
                         filled_from_category=int(n_cat), filled_from_any=int(n_any),
                         queries_requested=int(cfg.queries))


def _warn_cap(cfg: KB101Config, n_products: int) -> None:
    if cfg.queries > n_products:
        log.warning("KB-101: %d queries requested but the catalog has %d products; "
                    "every product is a query", cfg.queries, n_products)


def sample_draw(subcategories: Sequence, categories: Sequence, cfg: KB101Config,
                draw: int) -> RetrievalDraw:
    """One seeded KB-101 draw.

    Args:
        subcategories: (N,) subcategory label of every product (strings; "" = unknown).
        categories: (N,) category label of every product, aligned with ``subcategories``.
        cfg: the protocol settings.
        draw: draw index ``d``; the draw uses ``np.random.default_rng([cfg.seed, d])``.

    Returns:
        The queries, their (Q, 1 + negatives) candidates and the negative counts per tier.

    Raises:
        ValueError: label arrays of different lengths, a bad config, or a catalog with fewer
            than ``negatives + 1`` products.
    """
    index = _CatalogIndex(subcategories, categories)
    _check_config(cfg, index.n)
    _warn_cap(cfg, index.n)
    return _draw(index, cfg, draw)


def sample_kb101(subcategories: Sequence, categories: Sequence,
                 cfg: KB101Config | None = None) -> list[RetrievalDraw]:
    """All ``cfg.draws`` KB-101 draws (draw ``d`` equals ``sample_draw(..., draw=d)``).

    Args:
        subcategories: (N,) subcategory label of every product (strings; "" = unknown).
        categories: (N,) category label of every product.
        cfg: the protocol settings (defaults: 1000 queries, 100 negatives, 5 draws, seed 0).

    Returns:
        ``cfg.draws`` :class:`RetrievalDraw` objects.

    Raises:
        ValueError: as :func:`sample_draw`.
    """
    cfg = cfg or KB101Config()
    index = _CatalogIndex(subcategories, categories)
    _check_config(cfg, index.n)
    _warn_cap(cfg, index.n)
    return [_draw(index, cfg, d) for d in range(cfg.draws)]


def describe(draws: Sequence[RetrievalDraw]) -> str:
    """One line on a set of draws: sizes and where the negatives came from.

    Args:
        draws: draws of one protocol run.

    Returns:
        e.g. ``"5 draws x 725 queries x 101 candidates; negatives: 61.2% same subcategory,
        35.1% filled from the category, 3.7% from anywhere (queries capped at the catalog's
        725 products; 1000 requested)"``.
    """
    if not draws:
        raise ValueError("describe() needs at least one draw")
    sub = sum(d.from_subcategory for d in draws)
    cat = sum(d.filled_from_category for d in draws)
    anywhere = sum(d.filled_from_any for d in draws)
    total = max(sub + cat + anywhere, 1)
    counts = sorted({len(d.queries) for d in draws})
    n_q = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    text = (f"{len(draws)} draws x {n_q} queries x {draws[0].candidates.shape[1]} candidates; "
            f"negatives: {100 * sub / total:.1f}% same subcategory, "
            f"{100 * cat / total:.1f}% filled from the category, "
            f"{100 * anywhere / total:.1f}% from anywhere")
    requested = max(d.queries_requested for d in draws)
    if requested > counts[-1]:
        text += f" (queries capped at the catalog's {counts[-1]} products; {requested} requested)"
    return text
