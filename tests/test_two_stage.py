"""Two-stage retrieval figures: recall by one score, re-rank the top K by another."""

import numpy as np
import pytest

from kaleido.evaluation.metrics import full_catalog_ranks
from kaleido.evaluation.two_stage import two_stage_full_catalog, two_stage_rows


def test_rows_rerank_only_the_top_k_by_the_second_stage():
    first = np.array([[0.9, 0.8, 0.1, 0.0]])
    second = np.array([[0.0, 5.0, 9.0, 1.0]])  # the second stage prefers column 2, outside the top 2
    idx_i, idx_t = np.zeros((1, 4), int), np.arange(4)[None]
    calls = []

    def score(i, t):
        calls.append(len(t))
        return second[0, t]

    out = two_stage_rows(first, score, idx_i, idx_t, k=2)
    assert list(np.argsort(-out[0])) == [1, 0, 2, 3]  # top 2 swapped by the second stage, rest by the first
    assert calls == [2]  # only the K pairs are re-scored
    everything = two_stage_rows(first, score, idx_i, idx_t, k=10)
    assert list(np.argsort(-everything[0])) == [2, 1, 3, 0]
    with pytest.raises(ValueError, match="k must"):
        two_stage_rows(first, score, idx_i, idx_t, k=0)


def _toy(n=30, e=8, seed=0):
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(n, e)), rng.normal(size=(n, e))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    second = rng.normal(size=(n, n)) + 3 * np.eye(n)  # a re-ranker that mostly knows the answer
    return image, text, second


def test_full_catalog_with_k_covering_the_catalog_is_the_exhaustive_answer():
    image, text, second = _toy()
    groups = np.arange(30) // 2  # pairs of same-title products
    two = two_stage_full_catalog(image, text, lambda i, t: second[i, t], k=30, groups=groups, chunk=7)
    exhaustive = full_catalog_ranks(second, groups=groups)
    for d in ("ITR", "TIR"):
        assert two[d] == exhaustive[d]
    assert two["pairs_rescored"] == 2 * 30 * 30


def test_full_catalog_with_k_one_keeps_the_first_stage_answer_at_rank_one():
    image, text, second = _toy(seed=1)
    two = two_stage_full_catalog(image, text, lambda i, t: second[i, t], k=1)
    first = full_catalog_ranks(image @ text.T)
    for d in ("ITR", "TIR"):
        assert two[d]["R@1"] == first[d]["R@1"]
