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

Same-title products are never negatives. About a third of a fashion catalog shares its
exact title with another product; such a twin is indistinguishable from the positive on the
text side, and counting it against the model would punish it for a tie it cannot break.
When the titles are given (``titles=``), every product whose title equals the query's is
left out of all three tiers (the tiers then draw from what remains, in the same order), and
:attr:`RetrievalDraw.same_title_excluded` counts the products so left out. Titles are
compared after ``str(title).strip().lower()``; ``None`` / NaN read as ``""``, so products
with no title are each other's twins (their texts are identical too). A catalog in which a
product has fewer than ``negatives`` products of another title is rejected with a
ValueError (lower ``KB101Config.negatives``). Without titles nothing changes: the draws are
the same, number for number, as before titles existed.

Everything is a pure function of the labels (and titles) and :class:`KB101Config`: draw
``d`` uses ``np.random.default_rng([seed, d])``, so draws are reproducible one by one.
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
        same_title_excluded: products left out of the negative pools because they share the
            query's title, summed over the queries (0 when no titles were given).
    """

    queries: np.ndarray
    candidates: np.ndarray
    from_subcategory: int
    filled_from_category: int
    filled_from_any: int
    queries_requested: int = 0
    same_title_excluded: int = 0


def _label_codes(labels: Sequence, name: str, fold: bool = False) -> np.ndarray:
    """(N,) integer codes of string labels; None / NaN / "" all become the label "".

    ``fold`` compares ``str.strip().lower()`` of the labels (the rule for titles)."""
    def clean(x) -> str:
        if x is None or (isinstance(x, float) and x != x):
            return ""
        x = x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
        return x.strip().lower() if fold else x

    try:
        values = list(labels)
    except TypeError as err:
        raise ValueError(f"{name} must be a sequence of per-product labels, "
                         f"got {type(labels).__name__}") from err
    if values and isinstance(values[0], (list, tuple, np.ndarray)):
        raise ValueError(f"{name} must be one label per product (1-D), got nested sequences")
    strings = np.array([clean(x) for x in values], dtype=str)
    return np.unique(strings, return_inverse=True)[1].reshape(-1).astype(np.int64)


def title_codes(titles: Sequence) -> np.ndarray:
    """(N,) integer codes of product titles, equal exactly when two titles are the same
    after ``str(title).strip().lower()`` (None / NaN read as ``""``): the KB-101 twin rule,
    also usable as ``groups`` of :func:`kaleido.evaluation.metrics.full_catalog_ranks`."""
    return _label_codes(titles, "titles", fold=True)


def _groups(codes: np.ndarray) -> list[np.ndarray]:
    """Sorted member indices of each code (codes are 0..K-1, all present)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


class _CatalogIndex:
    """Per-label index arrays, built once and shared by all draws (no O(N^2) anywhere)."""

    def __init__(self, subcategories: Sequence, categories: Sequence,
                 titles: Sequence | None = None):
        self.sub = _label_codes(subcategories, "subcategories")
        self.cat = _label_codes(categories, "categories")
        if len(self.sub) != len(self.cat):
            raise ValueError(f"subcategories and categories must have one label per product; "
                             f"got {len(self.sub)} and {len(self.cat)}")
        self.n = len(self.sub)
        self.sub_groups = _groups(self.sub) if self.n else []
        self.cat_groups = _groups(self.cat) if self.n else []
        self._cat_other: dict[tuple[int, int], np.ndarray] = {}
        self.title: np.ndarray | None = None  # (N,) title codes, None without titles
        self.title_groups: list[np.ndarray] = []
        if titles is not None:
            self.title = title_codes(titles)
            if len(self.title) != self.n:
                raise ValueError(f"titles must have one title per product; got {len(self.title)} "
                                 f"titles for {self.n} products")
            self.title_groups = _groups(self.title) if self.n else []

    def twins(self, q: int) -> np.ndarray:
        """Sorted products sharing the title of ``q``, ``q`` included (just ``[q]`` without
        titles)."""
        if self.title is None:
            return np.array([q], dtype=np.int64)
        return self.title_groups[self.title[q]]

    def category_others(self, c: int, s: int) -> np.ndarray:
        """Sorted members of category ``c`` whose subcategory is not ``s``."""
        key = (c, s)
        if key not in self._cat_other:
            members = self.cat_groups[c]
            self._cat_other[key] = members[self.sub[members] != s]
        return self._cat_other[key]


def _check_config(cfg: KB101Config, index: _CatalogIndex) -> None:
    n_products = index.n
    for field in ("queries", "negatives", "draws"):
        if getattr(cfg, field) < 1:
            raise ValueError(f"KB101Config.{field} must be at least 1, got {getattr(cfg, field)}")
    if cfg.seed < 0:
        raise ValueError(f"KB101Config.seed must be non-negative, got {cfg.seed}")
    if n_products < cfg.negatives + 1:
        raise ValueError(
            f"the catalog has {n_products} products, too few for 1 positive + {cfg.negatives} "
            f"negatives per query; lower KB101Config.negatives to at most {max(n_products - 1, 0)}")
    if index.title is None:
        return
    # any product may be drawn as a query, so every product needs enough non-twins
    sizes = np.bincount(index.title)  # (T,) products per title
    eligible = n_products - sizes  # negatives available to a query of each title
    short = np.flatnonzero(eligible < cfg.negatives)
    if len(short):
        worst = short[np.argmax(sizes[short])]
        raise ValueError(
            f"{int(sizes[short].sum())} of the {n_products} products have fewer than "
            f"{cfg.negatives} products of another title to draw negatives from (the title of "
            f"product {int(index.title_groups[worst][0])} is shared by {int(sizes[worst])} "
            f"products); lower KB101Config.negatives to at most {int(eligible.min())}")


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
    n_sub = n_cat = n_any = n_twins = 0
    for row, q in enumerate(queries):
        s, c = index.sub[q], index.cat[q]
        group = index.sub_groups[s]  # sorted, contains q
        twins = index.twins(q)  # sorted, contains q: never negatives
        n_twins += len(twins) - 1
        # slots of the twins in the sorted pools; without titles only the query's own slot,
        # which keeps the random stream (and the draws) of the title-free protocol
        sub_twins = np.searchsorted(group, twins[index.sub[twins] == s])
        n_same = len(group) - len(sub_twins)
        if n_same >= n_neg:
            candidates[row, 1:] = group[_sample_excluding(rng, len(group), sub_twins, n_neg)]
            n_sub += n_neg
            continue
        same = np.delete(group, sub_twins)
        others = index.category_others(c, s)
        in_others = twins[(index.cat[twins] == c) & (index.sub[twins] != s)]
        cat_twins = np.searchsorted(others, in_others)
        need = n_neg - n_same
        if len(others) - len(cat_twins) >= need:
            fill_cat = others[_sample_excluding(rng, len(others), cat_twins, need)]
            fill_any = np.empty(0, dtype=np.int64)
        else:
            fill_cat = np.delete(others, cat_twins)
            excluded = np.union1d(np.union1d(group, others), twins)  # sorted; q is in group
            fill_any = _sample_excluding(rng, index.n, excluded, need - len(fill_cat))
        candidates[row, 1:] = np.concatenate([same, fill_cat, fill_any])
        n_sub += n_same
        n_cat += len(fill_cat)
        n_any += len(fill_any)
    return RetrievalDraw(queries=queries, candidates=candidates, from_subcategory=int(n_sub),
                         filled_from_category=int(n_cat), filled_from_any=int(n_any),
                         queries_requested=int(cfg.queries), same_title_excluded=int(n_twins))


def _warn_cap(cfg: KB101Config, n_products: int) -> None:
    if cfg.queries > n_products:
        log.warning("KB-101: %d queries requested but the catalog has %d products; "
                    "every product is a query", cfg.queries, n_products)


def sample_draw(subcategories: Sequence, categories: Sequence, cfg: KB101Config,
                draw: int, titles: Sequence | None = None) -> RetrievalDraw:
    """One seeded KB-101 draw.

    Args:
        subcategories: (N,) subcategory label of every product (strings; "" = unknown).
        categories: (N,) category label of every product, aligned with ``subcategories``.
        cfg: the protocol settings.
        draw: draw index ``d``; the draw uses ``np.random.default_rng([cfg.seed, d])``.
        titles: (N,) title of every product, or None. A product whose title equals the
            query's (after ``str.strip().lower()``) is never one of its negatives, in any
            tier. None: no title rule, the draws of the title-free protocol.

    Returns:
        The queries, their (Q, 1 + negatives) candidates, the negative counts per tier and
        the number of same-title products left out.

    Raises:
        ValueError: label arrays of different lengths, a bad config, a catalog with fewer
            than ``negatives + 1`` products, or (with titles) a product with fewer than
            ``negatives`` products of another title.
    """
    index = _CatalogIndex(subcategories, categories, titles)
    _check_config(cfg, index)
    _warn_cap(cfg, index.n)
    return _draw(index, cfg, draw)


def sample_kb101(subcategories: Sequence, categories: Sequence,
                 cfg: KB101Config | None = None,
                 titles: Sequence | None = None) -> list[RetrievalDraw]:
    """All ``cfg.draws`` KB-101 draws (draw ``d`` equals ``sample_draw(..., draw=d)``).

    Args:
        subcategories: (N,) subcategory label of every product (strings; "" = unknown).
        categories: (N,) category label of every product.
        cfg: the protocol settings (defaults: 1000 queries, 100 negatives, 5 draws, seed 0).
        titles: (N,) title of every product, or None; same-title products are never
            negatives (see :func:`sample_draw`).

    Returns:
        ``cfg.draws`` :class:`RetrievalDraw` objects.

    Raises:
        ValueError: as :func:`sample_draw`.
    """
    cfg = cfg or KB101Config()
    index = _CatalogIndex(subcategories, categories, titles)
    _check_config(cfg, index)
    _warn_cap(cfg, index.n)
    return [_draw(index, cfg, d) for d in range(cfg.draws)]


def describe(draws: Sequence[RetrievalDraw]) -> str:
    """One line on a set of draws: sizes and where the negatives came from.

    Args:
        draws: draws of one protocol run.

    Returns:
        e.g. ``"5 draws x 725 queries x 101 candidates; negatives: 61.2% same subcategory,
        35.1% filled from the category, 3.7% from anywhere, 1234 same-title products
        excluded from the negatives (queries capped at the catalog's 725 products; 1000
        requested)"``; the same-title part only when some were excluded.
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
    twins = sum(d.same_title_excluded for d in draws)
    if twins:
        text += f", {twins} same-title products excluded from the negatives"
    requested = max(d.queries_requested for d in draws)
    if requested > counts[-1]:
        text += f" (queries capped at the catalog's {counts[-1]} products; {requested} requested)"
    return text
