"""AKPM corruptions (rotation, jigsaw, camouflage, grey, blank) and ITM negatives."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kaleido.patches.geometry import level_slices
from kaleido.pretrain.corruptions import (
    JIGSAW_PERMUTATIONS,
    NegativeSampler,
    apply_jigsaw,
    apply_rotation,
    blank_level5,
    camouflage_level3,
    grey_level4,
    itm_negative,
    jigsaw_level2,
    rotate_level1,
    undo_jigsaw,
)

LEVELS = level_slices([1, 2, 3, 4, 5])
D = 8


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(55, D)).astype(np.float32)


def test_rotation(feats):
    rotated = np.random.default_rng(1).normal(size=(3, D)).astype(np.float32)
    before, rot_before = feats.copy(), rotated.copy()
    labels = Counter()
    for seed in range(400):
        out, r = rotate_level1(feats, rotated, LEVELS, np.random.default_rng(seed))
        labels[r] += 1
        assert out.dtype == feats.dtype and out.shape == feats.shape
        assert np.array_equal(out[1:], feats[1:])
        assert np.array_equal(out[0], feats[0] if r == 0 else rotated[r - 1])
    assert sorted(labels) == [0, 1, 2, 3] and min(labels.values()) > 60
    assert np.array_equal(feats, before) and np.array_equal(rotated, rot_before)
    assert np.array_equal(apply_rotation(feats, rotated, 2, LEVELS)[0], rotated[1])
    with pytest.raises(ValueError):
        apply_rotation(feats, rotated, 4, LEVELS)
    with pytest.raises(ValueError):
        apply_rotation(feats, rotated[:2], 1, LEVELS)


def test_jigsaw_permutations():
    assert len(JIGSAW_PERMUTATIONS) == 24 == len(set(JIGSAW_PERMUTATIONS))
    assert JIGSAW_PERMUTATIONS[0] == (0, 1, 2, 3)
    assert all(sorted(p) == [0, 1, 2, 3] for p in JIGSAW_PERMUTATIONS)


def test_jigsaw_convention_and_inverse(feats):
    before = feats.copy()
    s = LEVELS[2]
    labels = set()
    for seed in range(200):
        out, k = jigsaw_level2(feats, LEVELS, np.random.default_rng(seed))
        labels.add(k)
        perm = JIGSAW_PERMUTATIONS[k]
        for i in range(4):  # position i holds the original patch perm[i]
            assert np.array_equal(out[s.start + i], feats[s.start + perm[i]])
        rest = np.r_[: s.start, s.stop : len(feats)]
        assert np.array_equal(out[rest], feats[rest])
        assert np.array_equal(undo_jigsaw(out, k, LEVELS), feats)
    assert len(labels) == 24
    assert np.array_equal(feats, before)
    assert np.array_equal(apply_jigsaw(feats, 0, LEVELS), feats)
    # a non-involution: the inverse must use the inverse permutation
    k = JIGSAW_PERMUTATIONS.index((1, 2, 3, 0))
    out = apply_jigsaw(feats, k, LEVELS)
    assert np.array_equal(out[s.start], feats[s.start + 1])
    assert np.array_equal(out[s.start + 3], feats[s.start])
    assert np.array_equal(undo_jigsaw(out, k, LEVELS), feats)


def test_camouflage(feats):
    other = np.random.default_rng(9).normal(size=(55, D)).astype(np.float32)
    before, other_before = feats.copy(), other.copy()
    s = LEVELS[3]
    for patch in range(s.start, s.stop):
        out, label = camouflage_level3(feats, other, patch, LEVELS)
        assert label == patch - s.start and 0 <= label <= 8
        changed = np.where(np.any(out != feats, axis=1))[0]
        assert changed.tolist() == [patch]
        assert np.array_equal(out[patch], other[patch])
    assert np.array_equal(feats, before) and np.array_equal(other, other_before)
    with pytest.raises(ValueError, match="not on level 3"):
        camouflage_level3(feats, other, s.stop, LEVELS)


def test_grey(feats):
    grey = np.random.default_rng(2).normal(size=(16, D)).astype(np.float32)
    before = feats.copy()
    s = LEVELS[4]
    patches = [s.start + 3, s.start + 12]
    out = grey_level4(feats, grey, patches, LEVELS)
    assert np.array_equal(out[patches[0]], grey[3]) and np.array_equal(out[patches[1]], grey[12])
    assert np.where(np.any(out != feats, axis=1))[0].tolist() == patches
    assert np.array_equal(feats, before)
    with pytest.raises(ValueError, match="not on level 4"):
        grey_level4(feats, grey, [LEVELS[5].start], LEVELS)


def test_blank(feats):
    before = feats.copy()
    patches = np.array([30, 41, 54])
    out = blank_level5(feats, patches)
    assert np.all(out[patches] == 0)
    keep = np.setdiff1d(np.arange(55), patches)
    assert np.array_equal(out[keep], feats[keep])
    assert np.array_equal(feats, before)
    assert np.array_equal(blank_level5(feats, []), feats)


def test_itm_negative_prefers_subcategory_then_category():
    #            0    1    2    3    4    5
    groups = np.array(["a", "a", "b", "c", "d", "d"])
    parents = np.array(["X", "X", "X", "X", "Y", "Y"])
    sampler = NegativeSampler(groups, parents)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        assert sampler.sample(0, rng) == 1 and sampler.sample(1, rng) == 0
        assert sampler.sample(4, rng) == 5
        assert sampler.sample(2, rng) in {0, 1, 3}  # alone in "b": same category
    # a product alone in its subcategory and its category: any other product
    groups2, parents2 = np.array(["a", "a", "z"]), np.array(["X", "X", "Z"])
    seen = {itm_negative(2, groups2, parents2, np.random.default_rng(s)) for s in range(50)}
    assert seen == {0, 1}


def test_itm_negative_uniform_never_self_and_seeded():
    rng = np.random.default_rng(0)
    n = 40_000
    groups = rng.integers(0, 120, n)
    parents = groups // 3
    sampler = NegativeSampler(groups, parents)
    draws = [sampler.sample(i, np.random.default_rng(i)) for i in range(0, n, 37)]
    assert all(d != i and groups[d] == groups[i] for d, i in zip(draws, range(0, n, 37)))
    again = [sampler.sample(i, np.random.default_rng(i)) for i in range(0, n, 37)]
    assert draws == again
    # within a 4-product subcategory, the 3 others are drawn about equally
    small = NegativeSampler(np.array([0, 0, 0, 0, 1]), np.zeros(5, dtype=int))
    counts = Counter(small.sample(2, rng) for _ in range(3000))
    assert set(counts) == {0, 1, 3} and min(counts.values()) > 850


def test_itm_negative_errors():
    with pytest.raises(ValueError, match="at least 2 products"):
        itm_negative(0, np.array(["a"]), np.array(["X"]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="out of range"):
        NegativeSampler(np.array(["a", "b"]), np.array(["X", "X"])).sample(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="same length"):
        NegativeSampler(np.array(["a", "b"]), np.array(["X"]))
