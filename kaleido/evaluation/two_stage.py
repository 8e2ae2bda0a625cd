"""Two-stage retrieval figures: a first-stage score (the dual encoder's cosine) recalls the top K
candidates of each query, a second-stage score (Kaleido-BERT's ITM log-odds) re-orders those K;
the rest keep their first-stage order below them, as :class:`kaleido.search.SearchEngine` serves
them.

Only the K pairs per query are scored by the second stage, so the cost is Q x K forward passes
instead of Q x N.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kaleido.evaluation.metrics import _rank_summary

PairScore = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (images, texts) index arrays -> scores


def two_stage_rows(first: np.ndarray, second: PairScore, images: np.ndarray, texts: np.ndarray,
                   k: int) -> np.ndarray:
    """Scores whose order within each row is the two-stage order.

    Args:
        first: (Q, C) first-stage scores; row ``q`` holds one query's candidates.
        second: scores pairs of product indices, ``second(images[mask], texts[mask])``.
        images, texts: (Q, C) product indices of the image and the text of each pair.
        k: candidates per row re-scored by ``second`` (all when k >= C).

    Returns:
        (Q, C) float64: each row's top ``k`` by ``first`` above every other candidate, ordered
        by ``second``; the others as ``first`` orders them.
    """
    first = np.asarray(first, dtype=np.float64)
    if first.ndim != 2 or first.shape != np.shape(images) or first.shape != np.shape(texts):
        raise ValueError(f"first-stage scores {first.shape} and the pair indices must be (Q, C) alike")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, first.shape[1])
    top = np.argpartition(-first, k - 1, axis=1)[:, :k]                        # (Q, k) unordered
    mask = np.zeros(first.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    rescored = np.asarray(second(np.asarray(images)[mask], np.asarray(texts)[mask]), dtype=np.float64)
    out = first.copy()
    # above the best first-stage score, in the second stage's order
    out[mask] = first.max() + 1.0 + (rescored - rescored.min())
    return out


def two_stage_full_catalog(image_emb: np.ndarray, text_emb: np.ndarray, second: PairScore, k: int,
                           groups: np.ndarray | None = None, queries: np.ndarray | None = None,
                           chunk: int = 256) -> dict:
    """Full-catalog ranks of the two-stage system in both directions: each image query against
    every text (ITR), each text query against every image (TIR); the first hit is the true
    product or any product of its group (same title).

    Args:
        image_emb, text_emb: (N, E) first-stage embeddings (cosine = inner product).
        second: the re-ranking pair score (indices into the N products).
        k: candidates re-ranked per query.
        groups: (N,) group codes (same code = a hit); default each product its own.
        queries: the products used as queries (default all N).
        chunk: queries scored at a time (memory O(chunk x N)).

    Returns:
        ``{"ITR": {R@1, R@5, R@10, MedR, MRR}, "TIR": {...}, "n": N, "queries": Q, "k": k,
        "pairs_rescored": 2 x Q x k}``.
    """
    n = len(image_emb)
    if len(text_emb) != n:
        raise ValueError(f"{n} image and {len(text_emb)} text embeddings")
    codes = np.arange(n) if groups is None else np.asarray(groups)
    queries = np.arange(n) if queries is None else np.asarray(queries)
    ranks = {"ITR": [], "TIR": []}
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        cand = np.broadcast_to(np.arange(n), (len(q), n))
        qq = np.broadcast_to(q[:, None], (len(q), n))
        hit = codes[q][:, None] == codes[None, :]                              # (q, N)
        for name, first, images, texts in (("ITR", image_emb[q] @ text_emb.T, qq, cand),
                                           ("TIR", text_emb[q] @ image_emb.T, cand, qq)):
            s = two_stage_rows(first, second, images, texts, k)
            best = np.where(hit, s, -np.inf).max(1)
            ranks[name].append(1 + ((s >= best[:, None]) & ~hit).sum(1))
    out = {name: _rank_summary(np.concatenate(r)) for name, r in ranks.items()}
    return {**out, "n": int(n), "queries": int(len(queries)), "k": int(min(k, n)),
            "pairs_rescored": int(2 * len(queries) * min(k, n))}
