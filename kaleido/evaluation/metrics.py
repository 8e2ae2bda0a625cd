"""Retrieval and classification metrics of DESIGN.md stage 8 (numpy only).

Retrieval: the 1-based rank of the positive among a query's candidates, Recall@K, the
KB-101 summary over seeded draws (mean, std and SumR as in the paper) and full-catalog
ranks (optionally counting every product of the true one's group, e.g. the same title, as a
hit). Classification: accuracy and macro-F1 with scikit-learn's conventions.
Every result is a dict of plain Python numbers (JSON-serialisable as it is).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
DIRECTIONS = ("ITR", "TIR")  # image query -> text candidates, text query -> image candidates


def ranks_from_scores(scores: np.ndarray, positive: int | np.ndarray = 0) -> np.ndarray:
    """1-based rank of each query's positive among its candidates.

    Ties are counted pessimistically: rank = 1 + the number of *other* candidates scoring at
    least as high as the positive. A scorer that gives every candidate the same score (a
    collapsed model) then ranks the positive last (rank C), instead of first, which would
    report R@1 = 1 for a model that learnt nothing; the order of the candidates never matters.

    Args:
        scores: (Q, C) score of every candidate of every query, higher is better.
        positive: column of the positive, one for all queries or a (Q,) array.

    Returns:
        (Q,) int64 ranks in 1..C.

    Raises:
        ValueError: scores not 2-D, empty, containing NaN, or a positive column out of range.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (queries, candidates) with at least one candidate, "
                         f"got shape {scores.shape}")
    n_q, n_c = scores.shape
    try:
        positive = np.broadcast_to(np.asarray(positive), (n_q,))
    except ValueError as err:
        raise ValueError(f"positive must be one column index or one per query ({n_q}), "
                         f"got shape {np.shape(positive)}") from err
    if not np.issubdtype(positive.dtype, np.integer):
        raise ValueError(f"positive must be integer column indices, got dtype {positive.dtype}")
    if n_q and (positive.min() < 0 or positive.max() >= n_c):
        raise ValueError(f"positive column out of range 0..{n_c - 1}: "
                         f"min {positive.min()}, max {positive.max()}")
    nan_rows = np.flatnonzero(np.isnan(scores).any(axis=1)) if scores.dtype.kind == "f" else []
    if len(nan_rows):
        raise ValueError(f"scores contain NaN in {len(nan_rows)} rows (first: row {nan_rows[0]})")
    pos_score = scores[np.arange(n_q), positive]  # (Q,)
    # the positive itself is always >= its own score, hence no +1
    return (scores >= pos_score[:, None]).sum(axis=1).astype(np.int64)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Share of queries whose positive ranks within the top K.

    Args:
        ranks: (Q,) 1-based ranks (from :func:`ranks_from_scores`).
        ks: the cut-offs.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ...}`` as fractions in 0..1.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if ranks.min() < 1:
        raise ValueError(f"ranks are 1-based; got a rank of {ranks.min()}")
    return {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}


def _sum_r(recalls: dict[str, dict[str, float]]) -> float:
    return 100.0 * sum(recalls[d][f"R@{k}"] for d in DIRECTIONS for k in RECALL_KS)


def retrieval_summary(itr_ranks_per_draw: Sequence[np.ndarray],
                      tir_ranks_per_draw: Sequence[np.ndarray]) -> dict:
    """The KB-101 figures: Recall@1/5/10 of both directions averaged over the draws, and SumR.

    Args:
        itr_ranks_per_draw: per draw, (Q,) ranks of image queries among text candidates.
        tir_ranks_per_draw: per draw, (Q,) ranks of text queries among image candidates.

    Returns:
        ``{"ITR": {"R@1", "R@5", "R@10"}, "TIR": {...}, "SumR": float, "std": {"ITR": {...},
        "TIR": {...}, "SumR": float}, "draws": int, "queries": [Q per draw]}``; recalls are
        fractions (means over draws), std is the population std (ddof=0) over draws (0 with
        one draw), SumR = (R@1 + R@5 + R@10) x 100 summed over both directions, as in the
        paper (its maximum is 600).
    """
    if len(itr_ranks_per_draw) != len(tir_ranks_per_draw):
        raise ValueError(f"one ITR and one TIR rank array per draw; got {len(itr_ranks_per_draw)} "
                         f"ITR and {len(tir_ranks_per_draw)} TIR draws")
    if not itr_ranks_per_draw:
        raise ValueError("retrieval_summary needs at least one draw")
    per_draw = [{"ITR": recall_at_k(i), "TIR": recall_at_k(t)}
                for i, t in zip(itr_ranks_per_draw, tir_ranks_per_draw)]
    sum_r = np.array([_sum_r(r) for r in per_draw])
    out: dict = {}
    std: dict = {}
    for d in DIRECTIONS:
        out[d] = {k: float(np.mean([r[d][k] for r in per_draw])) for k in per_draw[0][d]}
        std[d] = {k: float(np.std([r[d][k] for r in per_draw])) for k in per_draw[0][d]}
    out["SumR"] = float(sum_r.mean())
    std["SumR"] = float(sum_r.std())
    out["std"] = std
    out["draws"] = len(per_draw)
    out["queries"] = [int(len(r)) for r in itr_ranks_per_draw]
    return out


def _rank_summary(ranks: np.ndarray) -> dict:
    out = recall_at_k(ranks)
    out["median_rank"] = float(np.median(ranks))
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def full_catalog_ranks(score_matrix: np.ndarray, chunk_rows: int = 1024,
                       groups: np.ndarray | None = None) -> dict:
    """Retrieval over the whole catalog: every product's true pair against all the others.

    Args:
        score_matrix: (N, N) with ``[i, j]`` = score of image ``i`` with text ``j``; the true
            pairs are on the diagonal.
        chunk_rows: rows compared at a time (bounds the memory at chunk_rows x N).
        groups: optional (N,) integer group of every product (e.g. title codes from
            :func:`kaleido.evaluation.kb101.title_codes`). Given, every text of image
            ``i``'s group is a hit: ITR rank = 1 + #{j : groups[j] != groups[i] and
            s[i, j] >= max over same-group j' of s[i, j']}; TIR likewise over column ``j``.

    Returns:
        ``{"ITR": {...}, "TIR": {...}, "n": N}``, each direction with ``R@1``, ``R@5``,
        ``R@10`` (fractions), ``median_rank`` and ``mrr`` (mean reciprocal rank); ITR ranks
        the texts of row ``i``, TIR the images of column ``j``; ties are pessimistic. With
        ``groups`` also ``"strict": {"ITR", "TIR"}`` (the diagonal-only ranks, as without
        groups) and ``"in_shared_group"``: products whose group has another member.
    """
    scores = np.asarray(score_matrix)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] == 0:
        raise ValueError(f"score_matrix must be square (N images, N texts) with N >= 1, "
                         f"got shape {scores.shape}")
    return full_catalog_ranks_chunked(lambda start, stop: scores[start:stop], len(scores),
                                      groups=groups, chunk_rows=chunk_rows,
                                      score_pairs=lambda images, texts: scores[images, texts])


def _check_groups(groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"groups must be ({n},) integers, one per product; got shape "
                         f"{groups.shape} of dtype {groups.dtype}")
    return groups


def _group_targets(score_pairs: Callable, groups: np.ndarray,
                   budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Per text ``j``: the best score of an image of its group and the diagonal score, from
    the within-group pairs only (sum of squared group sizes, at most ``budget`` at a time)."""
    n = len(groups)
    order = np.argsort(groups, kind="stable")
    _, first, sizes = np.unique(groups[order], return_index=True, return_counts=True)
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.repeat(np.arange(len(sizes)), sizes)  # group slot of every product
    lo, size = first[slot], sizes[slot]  # (N,) where j's group starts in order, and its size
    best = np.empty(n)
    diagonal = np.empty(n)
    cum = np.cumsum(size)  # pairs of texts 0..j
    start = 0
    while start < n:
        done = cum[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cum, done + budget, side="right")))
        texts = np.arange(start, stop)
        seg = size[start:stop]
        bounds = np.concatenate([[0], np.cumsum(seg)[:-1]])  # start of each text's segment
        offset = np.arange(seg.sum()) - np.repeat(bounds, seg)
        images = order[np.repeat(lo[start:stop], seg) + offset]
        texts = np.repeat(texts, seg)
        s = np.asarray(score_pairs(images, texts), dtype=np.float64).reshape(-1)
        if np.isnan(s).any():
            raise ValueError("scores contain NaN (in the pairs of same-group products)")
        best[start:stop] = np.maximum.reduceat(s, bounds)
        diagonal[start:stop] = s[images == texts]  # one per text, in text order
        start = stop
    return best, diagonal


def full_catalog_ranks_chunked(score_rows: Callable[[int, int], np.ndarray], n: int,
                               groups: np.ndarray | None = None, chunk_rows: int = 1024,
                               score_pairs: Callable | None = None) -> dict:
    """:func:`full_catalog_ranks` from rows of scores computed on demand: the (N, N) matrix
    is never held, memory is O(chunk_rows x N).

    ITR ranks come from each row chunk alone. A TIR rank needs the score its column must
    beat (the diagonal, or the best same-group image) before counting, so without
    ``score_pairs`` every row chunk is requested twice (pass 1: those targets and the ITR
    ranks, pass 2: the TIR counts), i.e. 2 x N^2 scores, free only when ``score_rows``
    caches. With ``score_pairs`` the targets come first from the within-group pairs (sum of
    squared group sizes, N without groups) and the rows are requested once.

    Args:
        score_rows: ``score_rows(start, stop)`` -> (stop - start, N) scores of images
            ``start..stop-1`` with every text ``0..N-1``.
        n: the number of products N.
        groups: optional (N,) integer group per product, as in :func:`full_catalog_ranks`.
        chunk_rows: image rows requested at a time.
        score_pairs: optional ``score_pairs(images, texts)`` -> scores of the pairs
            ``(images[k], texts[k])`` (1-D integer arrays), consistent with ``score_rows``.

    Returns:
        As :func:`full_catalog_ranks`.

    Raises:
        ValueError: n < 1, chunk_rows < 1, bad groups, a chunk of the wrong shape, or NaN.
    """
    if n < 1:
        raise ValueError(f"full-catalog retrieval needs at least one product, got n={n}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    grouped = _check_groups(groups, n)
    codes = grouped if grouped is not None else np.arange(n)  # no groups: each its own group

    def rows():
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            s = np.asarray(score_rows(start, stop))
            if s.shape != (stop - start, n):
                raise ValueError(f"score_rows({start}, {stop}) must return shape "
                                 f"{(stop - start, n)}, got {s.shape}")
            if s.dtype.kind == "f" and np.isnan(s).any():
                bad = start + np.flatnonzero(np.isnan(s).any(axis=1))[0]
                raise ValueError(f"scores contain NaN (first: row {bad})")
            same = codes[start:stop, None] == codes[None, :]  # (rows, N) hits
            yield start, stop, s, same

    itr = np.empty(n, dtype=np.int64)
    itr_strict = np.empty(n, dtype=np.int64)
    tir = np.ones(n, dtype=np.int64)  # 1 + other-group images counted below
    tir_strict = np.zeros(n, dtype=np.int64)  # the diagonal counts itself
    if score_pairs is not None:
        col_best, col_diag = _group_targets(score_pairs, codes, chunk_rows * n)
    else:
        col_best, col_diag = np.full(n, -np.inf), np.empty(n)
    for start, stop, s, same in rows():
        hits = np.where(same, s, -np.inf)  # (rows, N) scores of the same-group texts only
        best = hits.max(axis=1)  # (rows,) best hit of each image
        itr[start:stop] = 1 + ((s >= best[:, None]) & ~same).sum(axis=1)
        diagonal = s[np.arange(stop - start), np.arange(start, stop)]
        itr_strict[start:stop] = (s >= diagonal[:, None]).sum(axis=1)
        if score_pairs is None:
            col_best = np.maximum(col_best, hits.max(axis=0))
            col_diag[start:stop] = diagonal
        else:
            tir += ((s >= col_best) & ~same).sum(axis=0)
            tir_strict += (s >= col_diag).sum(axis=0)
    if score_pairs is None:
        for start, stop, s, same in rows():
            tir += ((s >= col_best) & ~same).sum(axis=0)
            tir_strict += (s >= col_diag).sum(axis=0)
    out = {"ITR": _rank_summary(itr), "TIR": _rank_summary(tir), "n": int(n)}
    if grouped is not None:
        out["strict"] = {"ITR": _rank_summary(itr_strict), "TIR": _rank_summary(tir_strict)}
        slot = np.unique(codes, return_inverse=True)[1].reshape(-1)
        out["in_shared_group"] = int((np.bincount(slot)[slot] > 1).sum())
    return out


def _labels(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {arr.shape}")
    return arr


def classification_metrics(y_true: Sequence, y_pred: Sequence) -> dict:
    """Accuracy and macro-F1 of category (CR) or subcategory (SUB) predictions.

    Macro-F1 follows ``sklearn.metrics.f1_score(y_true, y_pred, average="macro",
    labels=np.unique(y_true), zero_division=0)``: F1 is averaged over the classes present in
    ``y_true``. A class predicted but never true gets no F1 of its own; its predictions only
    cost the recall of the samples' true classes. A true class never predicted has F1 = 0.

    Args:
        y_true: (n,) true labels (strings or ints).
        y_pred: (n,) predicted labels, same kind.

    Returns:
        ``{"accuracy": float, "macro_f1": float, "classes": classes in y_true, "n": n}``.

    Raises:
        ValueError: different lengths, no samples, or strings mixed with numbers.
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred must have the same length; got {len(t)} and {len(p)}")
    if len(t) == 0:
        raise ValueError("classification_metrics needs at least one sample")
    text_t, text_p = t.dtype.kind in "USO", p.dtype.kind in "USO"
    if text_t != text_p:
        kinds = {True: "strings", False: "numbers"}
        raise ValueError(f"y_true holds {kinds[text_t]} but y_pred holds {kinds[text_p]}; "
                         f"use the same kind of labels")
    if text_t:
        t, p = t.astype(str), p.astype(str)
    classes, t_idx = np.unique(t, return_inverse=True)
    t_idx = t_idx.reshape(-1)
    k = len(classes)
    slot = np.minimum(np.searchsorted(classes, p), k - 1)
    known = classes[slot] == p  # predictions of a class present in y_true
    correct = t == p
    tp = np.bincount(t_idx[correct], minlength=k)
    n_true = np.bincount(t_idx, minlength=k)
    n_pred = np.bincount(slot[known], minlength=k)
    f1 = 2 * tp / (n_true + n_pred)  # = 2PR / (P + R); n_true >= 1 for every class
    return {"accuracy": float(correct.mean()), "macro_f1": float(f1.mean()),
            "classes": int(k), "n": int(len(t))}
