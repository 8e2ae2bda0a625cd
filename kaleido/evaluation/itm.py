"""ITM accuracy on clean pairs with same-subcategory negatives (the matching target of the
evaluation protocol): every product's true pair and one pair of its image with the title of
another product of the same subcategory (filled from the category, then anywhere), never a
same-title twin; a pair is called a match when its match log-odds are positive. The same
pairs score any matcher: the ITM head, a first stage, a first stage + w x ITM.
"""

from __future__ import annotations

import numpy as np

from kaleido.contrastive import title_codes
from kaleido.pretrain.corruptions import NegativeSampler


def itm_negatives(products, seed: int = 0) -> np.ndarray:
    """(N,) for each product the index of a hard negative text: same subcategory first,
    never the product itself nor a product with the same title (where one exists)."""
    n = len(products)
    sampler = NegativeSampler(np.array([p.subcategory or "" for p in products]),
                              np.array([p.category or "" for p in products]))
    codes = title_codes([p.title for p in products])
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = sampler.sample_other_title(i, codes, np.random.default_rng([seed, i]))
    return out


def itm_accuracy(score, products, seed: int = 0) -> dict:
    """Accuracy of the sign of the match log-odds on N positives + N hard negatives.

    Args:
        score: ``score(images, texts) -> (N,)`` match scores of pairs of product indices: a
            :class:`kaleido.evaluation.scorer.PairScorer`'s ``score``, a first stage's, or a fusion.
        products: the products (``scorer``'s order).
        seed: seed of the negative draw.

    The sign needs a calibrated offset, which a softmax over 1 true pair + k negatives (the
    retrieval fine-tuning loss) leaves free: it is shift-invariant. So two threshold-free
    figures come beside it: ``pairwise_accuracy``, the share of products whose true pair
    scores above its hard negative, and ``auc``, the ROC AUC of all positives against all
    negatives (ties count half).

    Returns:
        ``{"accuracy", "positive_accuracy", "negative_accuracy", "pairwise_accuracy", "auc",
        "pairs", "negatives_same_subcategory"}`` (fractions).
    """
    n = len(products)
    if n < 2:
        raise ValueError("ITM accuracy needs at least 2 products")
    idx = np.arange(n)
    neg = itm_negatives(products, seed)
    pos_scores = np.asarray(score(idx, idx))
    neg_scores = np.asarray(score(idx, neg))
    same_sub = np.mean([products[i].subcategory == products[j].subcategory for i, j in zip(idx, neg)])
    return {"accuracy": float(np.mean(np.concatenate([pos_scores > 0, neg_scores <= 0]))),
            "positive_accuracy": float(np.mean(pos_scores > 0)),
            "negative_accuracy": float(np.mean(neg_scores <= 0)),
            "pairwise_accuracy": float(np.mean(pos_scores > neg_scores) + 0.5 * np.mean(pos_scores == neg_scores)),
            "auc": roc_auc(pos_scores, neg_scores),
            "pairs": int(2 * n), "negatives_same_subcategory": float(same_sub)}


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U / n_p n_n)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    n_p, n_n = len(positive), len(negative)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))
