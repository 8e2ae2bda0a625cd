"""Alignment guided masking, the random ablation and the 80/10/10 token corruption."""

from __future__ import annotations

import numpy as np
import pytest

from kaleido.alignment.generator import AlignedPair
from kaleido.patches.geometry import level_slices
from kaleido.pretrain.masking import (
    IGNORE_INDEX,
    MaskingConfig,
    alignment_guided_mask,
    mask_tokens,
    plan_masks,
    random_mask,
    token_budget,
    word_groups,
)

LEVELS = level_slices([1, 2, 3, 4, 5])
QUOTAS = {3: 1, 4: 2, 5: 3}


def synthetic_text(rng, n_words=None):
    """Word groups of 1-3 WordPieces after [CLS] (position 0)."""
    n_words = int(rng.integers(1, 25)) if n_words is None else n_words
    words, pos = [], 1
    for _ in range(n_words):
        k = int(rng.integers(1, 4))
        words.append(tuple(range(pos, pos + k)))
        pos += k
    return words


def synthetic_pairs(rng, words, n_pairs):
    """Random pairs; several share words or patches; some tokens span two words."""
    pairs = []
    for _ in range(n_pairs):
        w = words[int(rng.integers(len(words)))]
        tokens = list(w[: int(rng.integers(1, len(w) + 1))])
        if rng.random() < 0.2:  # a word occurring twice in the text
            tokens += list(words[int(rng.integers(len(words)))])
        level = int(rng.integers(3, 6))
        s = LEVELS[level]
        patch = int(rng.integers(s.start, s.start + min(4, s.stop - s.start)))  # crowd a few patches
        pairs.append((tuple(sorted(set(tokens))), patch))
    return pairs


def check_plan(plan, words, cfg):
    for level, k in QUOTAS.items():
        ps = plan.patches[level]
        assert len(ps) == k and len(set(ps.tolist())) == k
        assert np.all((ps >= LEVELS[level].start) & (ps < LEVELS[level].stop))
        assert np.all(np.diff(ps) > 0)
    toks = set(plan.tokens.tolist())
    assert np.all(np.diff(plan.tokens) > 0)
    groups = words if cfg.whole_word else [(t,) for w in words for t in w]
    masked_groups = [g for g in groups if set(g) & toks]
    assert all(set(g) <= toks for g in masked_groups), "a word was masked partially"
    n = sum(len(g) for g in groups)
    budget = token_budget(n, cfg.token_ratio)
    assert len(toks) >= budget
    if masked_groups:
        assert len(toks) - budget < max(len(g) for g in masked_groups), "over budget by more than a word"


def test_word_groups_from_word_ids():
    assert word_groups([None, 0, 0, 1, 2, 2, 2, None]) == [(1, 2), (3,), (4, 5, 6)]
    assert word_groups([None, None]) == []
    # a text pair restarts its word ids: runs stay separate
    assert word_groups([None, 0, 1, None, 0, 1, None]) == [(1,), (2,), (4,), (5,)]


def test_token_budget():
    assert token_budget(0, 0.15) == 0
    assert token_budget(1, 0.15) == 1
    assert token_budget(20, 0.15) == 3
    assert token_budget(62, 0.15) == 9


@pytest.mark.parametrize("strategy", ["agm", "random"])
@pytest.mark.parametrize("whole_word", [True, False])
def test_exact_quotas_budget_and_whole_words(strategy, whole_word):
    cfg = MaskingConfig(strategy=strategy, whole_word=whole_word)
    for seed in range(300):
        rng = np.random.default_rng(seed)
        words = synthetic_text(rng)
        pairs = synthetic_pairs(rng, words, int(rng.integers(0, 30)))
        plan = plan_masks(words, pairs, LEVELS, rng, cfg)
        check_plan(plan, words, cfg)


@pytest.mark.parametrize("whole_word", [True, False])
def test_agm_never_masks_both_sides_of_a_pair(whole_word):
    cfg = MaskingConfig(whole_word=whole_word)
    for seed in range(1500):
        rng = np.random.default_rng(seed)
        words = synthetic_text(rng)
        pairs = synthetic_pairs(rng, words, int(rng.integers(1, 40)))
        plan = alignment_guided_mask(words, pairs, LEVELS, rng, cfg)
        toks, patches = set(plan.tokens.tolist()), set(plan.all_patches.tolist())
        for tokens, patch in pairs:
            assert not (patch in patches and set(tokens) & toks), (seed, tokens, patch)
        check_plan(plan, words, cfg)


def test_agm_prefers_aligned_pairs():
    cfg = MaskingConfig()
    words = [(i,) for i in range(1, 41)]  # 40 single-piece words: budget 6
    aligned_share = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        pairs = []  # 24 words each aligned to one distinct patch of every level 3..5
        for w in range(24):
            for level in (3, 4, 5):
                s = LEVELS[level]
                pairs.append(((w + 1,), s.start + w % (s.stop - s.start)))
        plan = alignment_guided_mask(words, pairs, LEVELS, rng, cfg)
        aligned_patches = {p for _, p in pairs}
        assert plan.aligned_patches + plan.aligned_tokens > 0
        assert plan.aligned_patches == sum(p in aligned_patches for p in plan.all_patches.tolist())
        aligned_share.append(plan.aligned_patches / 6)
        assert plan.aligned_tokens <= len(plan.tokens)
    assert np.mean(aligned_share) > 0.8


def test_agm_keeps_the_token_budget_reachable():
    # every word is aligned to the same level-3 patch
    words = [(i,) for i in range(1, 21)]
    pairs = [((i,), LEVELS[3].start) for i in range(1, 21)]
    cfg = MaskingConfig()
    for seed in range(50):
        plan = alignment_guided_mask(words, pairs, LEVELS, np.random.default_rng(seed), cfg)
        # masking the patch would block every word and make the budget of 3 unreachable
        assert LEVELS[3].start not in plan.patches[3]
        assert plan.aligned_tokens == len(plan.tokens) == 3 and plan.aligned_patches == 0


def test_agm_accepts_aligned_pair_objects():
    words = [(1, 2), (3,), (4,)]
    objs = [AlignedPair("shirt", (1, 2), 3, 7, 0.4), AlignedPair("red", (3,), 5, 40, 0.2)]
    tuples = [((1, 2), 7), ((3,), 40)]
    a = alignment_guided_mask(words, objs, LEVELS, np.random.default_rng(0), MaskingConfig())
    b = alignment_guided_mask(words, tuples, LEVELS, np.random.default_rng(0), MaskingConfig())
    assert np.array_equal(a.tokens, b.tokens)
    assert all(np.array_equal(a.patches[k], b.patches[k]) for k in QUOTAS)


def test_degenerate_alignment_still_keeps_quota_and_budget():
    # one word aligned to every level-3 patch: masking it would leave level 3 no patch
    words = [(1,)]
    pairs = [((1,), p) for p in range(LEVELS[3].start, LEVELS[3].stop)]
    cfg = MaskingConfig()
    for seed in range(50):
        plan = alignment_guided_mask(words, pairs, LEVELS, np.random.default_rng(seed), cfg)
        assert len(plan.patches[3]) == 1 and len(plan.patches[4]) == 2 and len(plan.patches[5]) == 3
        assert plan.tokens.tolist() == [1]  # budget 1 is kept: the quota fallback takes a blocked patch


def test_seeded_determinism():
    rng = np.random.default_rng(123)
    words = synthetic_text(rng, 20)
    pairs = synthetic_pairs(rng, words, 15)
    for strategy in ("agm", "random"):
        cfg = MaskingConfig(strategy=strategy)
        a = plan_masks(words, pairs, LEVELS, np.random.default_rng(7), cfg)
        b = plan_masks(words, pairs, LEVELS, np.random.default_rng(7), cfg)
        assert np.array_equal(a.tokens, b.tokens)
        assert all(np.array_equal(a.patches[k], b.patches[k]) for k in QUOTAS)
        assert (a.aligned_tokens, a.aligned_patches) == (b.aligned_tokens, b.aligned_patches)
        plans = [plan_masks(words, pairs, LEVELS, np.random.default_rng(s), cfg) for s in range(10)]
        keys = {(tuple(p.tokens), tuple(p.all_patches)) for p in plans}
        assert len(keys) > 5


def test_random_strategy_ignores_pairs():
    rng = np.random.default_rng(5)
    words = synthetic_text(rng, 15)
    pairs = synthetic_pairs(rng, words, 20)
    cfg = MaskingConfig(strategy="random")
    a = plan_masks(words, pairs, LEVELS, np.random.default_rng(3), cfg)
    b = plan_masks(words, [], LEVELS, np.random.default_rng(3), cfg)
    c = random_mask(words, LEVELS, np.random.default_rng(3), cfg)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.tokens, c.tokens)
    assert all(np.array_equal(a.patches[k], b.patches[k]) for k in QUOTAS)
    assert a.aligned_tokens == a.aligned_patches == 0


@pytest.mark.parametrize("strategy", ["agm", "random"])
def test_empty_text_and_empty_pairs(strategy):
    cfg = MaskingConfig(strategy=strategy)
    plan = plan_masks([], [], LEVELS, np.random.default_rng(0), cfg)
    assert plan.tokens.size == 0 and plan.tokens.dtype == np.int64
    assert {k: len(v) for k, v in plan.patches.items()} == QUOTAS
    # pairs whose tokens are outside the (empty) text only offer their patch
    plan = plan_masks([], [((1,), LEVELS[4].start)], LEVELS, np.random.default_rng(0), cfg)
    assert plan.tokens.size == 0
    plan = plan_masks([(1, 2)], [], LEVELS, np.random.default_rng(0), cfg)
    assert plan.tokens.tolist() == [1, 2]


def test_bad_config_raises():
    with pytest.raises(ValueError, match="unknown masking strategy"):
        plan_masks([(1,)], [], LEVELS, np.random.default_rng(0), MaskingConfig(strategy="bogus"))
    with pytest.raises(ValueError, match="level 6"):
        plan_masks([(1,)], [], LEVELS, np.random.default_rng(0), MaskingConfig(mask_levels=[3, 4, 6]))
    with pytest.raises(ValueError, match="cannot mask 10"):
        plan_masks([(1,)], [], LEVELS, np.random.default_rng(0), MaskingConfig(patches_per_level=[10, 2, 3]))


def test_mask_tokens_80_10_10():
    vocab, mask_id, special = 1000, 103, {0, 100, 101, 102, 103}
    rng = np.random.default_rng(0)
    ids = rng.integers(200, vocab, size=20_000)
    ids_before = ids.copy()
    positions = np.arange(20_000)
    masked, labels = mask_tokens(ids, positions, rng, mask_id, vocab, special, MaskingConfig())
    assert np.array_equal(ids, ids_before)  # input untouched
    assert np.array_equal(labels, ids)
    is_mask = masked == mask_id
    same = masked == ids
    rand = ~is_mask & ~same
    assert abs(is_mask.mean() - 0.8) < 0.015
    assert abs(rand.mean() - 0.1) < 0.015
    assert abs(same.mean() - 0.1) < 0.015
    assert not np.isin(masked[rand], list(special)).any()
    assert masked.min() >= 0 and masked.max() < vocab


def test_mask_tokens_labels_and_specials():
    vocab, mask_id = 50, 3
    special = np.arange(0, 45)  # only 45..49 are valid random replacements
    ids = np.array([1, 46, 47, 48, 49, 2])
    positions = np.array([1, 3])
    cfg = MaskingConfig(mask_prob=0.0, random_prob=1.0)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        masked, labels = mask_tokens(ids, positions, rng, mask_id, vocab, special, cfg)
        assert labels.tolist() == [IGNORE_INDEX, 46, IGNORE_INDEX, 48, IGNORE_INDEX, IGNORE_INDEX]
        assert np.all(masked[positions] >= 45)
        assert np.array_equal(np.delete(masked, positions), np.delete(ids, positions))
    masked, labels = mask_tokens(ids, np.array([], dtype=int), np.random.default_rng(0), mask_id, vocab,
                                 special, MaskingConfig())
    assert np.array_equal(masked, ids) and np.all(labels == IGNORE_INDEX)
    with pytest.raises(ValueError):
        mask_tokens(ids, positions, np.random.default_rng(0), mask_id, vocab, special,
                    MaskingConfig(mask_prob=0.8, random_prob=0.3))
