"""AKPM corruptions of the kaleido patch features, and image-text-mismatch negatives.

One corruption per level (DESIGN.md stage 7, Aligned Kaleido Patch Modeling):

========  ===========  ==========================================================
level     task         corruption (label)
========  ===========  ==========================================================
1 (1x1)   rotation     the patch feature replaced by its 90/180/270 rotation (0..3)
2 (2x2)   jigsaw       the 4 patch features permuted (one of 24 permutations)
3 (3x3)   camouflage   one patch replaced by another product's same patch (0..8)
4 (4x4)   grey         the masked patches replaced by their greyscale features
5 (5x5)   blank        the masked patches zeroed
========  ===========  ==========================================================

Features are float arrays ``(P, D)`` of the patches of one product (55 for levels 1..5),
with ``levels = {level: slice}`` from :func:`kaleido.patches.geometry.level_slices`.
Every function returns a new array and never modifies its inputs; the random ones take
an explicit ``np.random.Generator``. Each sampling function has a deterministic
``apply_*`` core that takes the label, so the corruption can be checked and inverted.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

#: The 24 orderings of the 4 level-2 patches; the jigsaw label indexes this list and
#: label 0 is the identity.
JIGSAW_PERMUTATIONS: list[tuple[int, ...]] = list(itertools.permutations(range(4)))


def _level(levels: dict[int, slice], level: int, size: int | None = None) -> slice:
    if level not in levels:
        raise ValueError(f"patch level {level} is not among the levels {sorted(levels)}")
    s = levels[level]
    if size is not None and s.stop - s.start != size:
        raise ValueError(f"level {level} must have {size} patches, has {s.stop - s.start}")
    return s


def _check_in_level(patches: np.ndarray, s: slice, level: int) -> None:
    bad = patches[(patches < s.start) | (patches >= s.stop)]
    if bad.size:
        raise ValueError(
            f"patch indices {bad.tolist()} are not on level {level} (global indices {s.start}..{s.stop - 1})"
        )


# --------------------------------------------------------------------------- level 1


def apply_rotation(features: np.ndarray, rotated: np.ndarray, label: int,
                   levels: dict[int, slice]) -> np.ndarray:
    """Put the level-1 patch at rotation ``label`` (0 = as is, 1..3 = 90/180/270 degrees).

    Args:
        features: (P, D) patch features.
        rotated: (3, D) features of the level-1 patch rotated by 90, 180 and 270 degrees.
        label: rotation class in 0..3.
        levels: ``{level: slice}`` of the patch sequence.

    Returns:
        (P, D) new features.
    """
    s = _level(levels, 1, size=1)
    if not 0 <= label <= 3:
        raise ValueError(f"rotation label must be in 0..3, got {label}")
    rotated = np.asarray(rotated)
    if rotated.shape != (3, features.shape[1]):
        raise ValueError(f"rotated features must be (3, {features.shape[1]}), got {rotated.shape}")
    out = np.array(features, copy=True)
    if label > 0:
        out[s.start] = rotated[label - 1]
    return out


def rotate_level1(features: np.ndarray, rotated: np.ndarray, levels: dict[int, slice],
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rotation task: rotate the level-1 patch by a uniform random multiple of 90 degrees.

    Args:
        features: (P, D) patch features.
        rotated: (3, D) precomputed features of the level-1 patch rotated by 90/180/270.
        levels: ``{level: slice}`` of the patch sequence.
        rng: the random generator.

    Returns:
        ``(features, label)``: new (P, D) features and the rotation class r in 0..3
        (r = 0 keeps the patch, r > 0 puts ``rotated[r - 1]``).
    """
    label = int(rng.integers(4))
    return apply_rotation(features, rotated, label, levels), label


# --------------------------------------------------------------------------- level 2


def apply_jigsaw(features: np.ndarray, label: int, levels: dict[int, slice]) -> np.ndarray:
    """Permute the level-2 patches: position ``i`` receives patch ``perm[i]``.

    With ``perm = JIGSAW_PERMUTATIONS[label]`` and ``s = levels[2]``,
    ``out[s.start + i] = features[s.start + perm[i]]``; :func:`undo_jigsaw` inverts it.

    Args:
        features: (P, D) patch features.
        label: permutation class in 0..23 (0 = identity).
        levels: ``{level: slice}`` of the patch sequence.

    Returns:
        (P, D) new features.
    """
    s = _level(levels, 2, size=4)
    if not 0 <= label < len(JIGSAW_PERMUTATIONS):
        raise ValueError(f"jigsaw label must be in 0..{len(JIGSAW_PERMUTATIONS) - 1}, got {label}")
    out = np.array(features, copy=True)
    out[s] = features[s.start + np.asarray(JIGSAW_PERMUTATIONS[label])]
    return out


def undo_jigsaw(features: np.ndarray, label: int, levels: dict[int, slice]) -> np.ndarray:
    """Inverse of :func:`apply_jigsaw`: patch ``perm[i]`` gets back the row at position ``i``."""
    s = _level(levels, 2, size=4)
    out = np.array(features, copy=True)
    out[s.start + np.asarray(JIGSAW_PERMUTATIONS[label])] = features[s]
    return out


def jigsaw_level2(features: np.ndarray, levels: dict[int, slice],
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Jigsaw task: shuffle the 4 level-2 patches by a uniform random permutation.

    Args:
        features: (P, D) patch features.
        levels: ``{level: slice}`` of the patch sequence.
        rng: the random generator.

    Returns:
        ``(features, label)``: new (P, D) features and the permutation class k in 0..23;
        position ``i`` of level 2 holds the original patch ``JIGSAW_PERMUTATIONS[k][i]``.
    """
    label = int(rng.integers(len(JIGSAW_PERMUTATIONS)))
    return apply_jigsaw(features, label, levels), label


# --------------------------------------------------------------------------- level 3


def camouflage_level3(features: np.ndarray, other_features: np.ndarray, patch: int,
                      levels: dict[int, slice]) -> tuple[np.ndarray, int]:
    """Camouflage task: replace one level-3 patch by the same patch of another product.

    The patch comes from the sample's :class:`~kaleido.pretrain.masking.MaskPlan`
    (its level-3 entry), so the camouflaged patch is the masked one.

    Args:
        features: (P, D) patch features of the product.
        other_features: (P, D) patch features of another product.
        patch: GLOBAL index of the level-3 patch to replace.
        levels: ``{level: slice}`` of the patch sequence.

    Returns:
        ``(features, label)``: new (P, D) features and the patch's position within level 3
        (0..8, row-major).
    """
    s = _level(levels, 3)
    patch = int(patch)
    _check_in_level(np.asarray([patch]), s, 3)
    if other_features.shape != features.shape:
        raise ValueError(f"other product's features {other_features.shape} differ from {features.shape}")
    out = np.array(features, copy=True)
    out[patch] = other_features[patch]
    return out, patch - s.start


# --------------------------------------------------------------------------- levels 4, 5


def grey_level4(features: np.ndarray, grey: np.ndarray, patches: Sequence[int],
                levels: dict[int, slice]) -> np.ndarray:
    """Grey-to-colour task: give the chosen level-4 patches as their greyscale features.

    Args:
        features: (P, D) patch features.
        grey: (n4, D) features of the greyscale versions of all level-4 patches (16 for 4x4),
            in level order.
        patches: GLOBAL indices of the level-4 patches to grey.
        levels: ``{level: slice}`` of the patch sequence.

    Returns:
        (P, D) new features; row ``p`` is ``grey[p - levels[4].start]`` for each chosen ``p``.
    """
    s = _level(levels, 4)
    idx = np.asarray(patches, dtype=np.int64).reshape(-1)
    _check_in_level(idx, s, 4)
    grey = np.asarray(grey)
    if grey.shape != (s.stop - s.start, features.shape[1]):
        raise ValueError(f"grey features must be ({s.stop - s.start}, {features.shape[1]}), got {grey.shape}")
    out = np.array(features, copy=True)
    out[idx] = grey[idx - s.start]
    return out


def blank_level5(features: np.ndarray, patches: Sequence[int]) -> np.ndarray:
    """Blank-to-colour task: zero the chosen patches (the level-5 entry of the mask plan).

    Args:
        features: (P, D) patch features.
        patches: GLOBAL indices of the patches to blank.

    Returns:
        (P, D) new features with those rows set to 0.
    """
    idx = np.asarray(patches, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(features)):
        raise ValueError(f"patch indices {idx.tolist()} out of range for {len(features)} patches")
    out = np.array(features, copy=True)
    out[idx] = 0
    return out


# --------------------------------------------------------------------------- ITM negatives


class _Members:
    """Products per label, so "another product with my label" is an O(1) draw."""

    def __init__(self, labels: np.ndarray):
        _, inv = np.unique(labels, return_inverse=True)
        inv = inv.reshape(-1)
        self.order = np.argsort(inv, kind="stable")  # products sorted by label
        counts = np.bincount(inv)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])[inv]  # per product
        self.count = counts[inv]  # per product: size of its label's group
        self.rank = np.empty(len(inv), dtype=np.int64)  # per product: place in ``order``
        self.rank[self.order] = np.arange(len(inv))

    def other(self, index: int, rng: np.random.Generator) -> int | None:
        n = int(self.count[index])
        if n < 2:
            return None
        j = int(rng.integers(n - 1))  # skip the product itself
        own = int(self.rank[index] - self.start[index])
        return int(self.order[self.start[index] + (j if j < own else j + 1)])


class NegativeSampler:
    """Draws image-text-mismatch negatives, built once for the whole catalog.

    A negative for product ``i`` is another product of the same subcategory when one
    exists, else of the same category, else any other product. Each draw is O(1).

    Args:
        groups: (N,) subcategory label of each product (any comparable dtype).
        parents: (N,) category label of each product.
    """

    def __init__(self, groups, parents):
        groups, parents = np.asarray(groups), np.asarray(parents)
        if groups.shape != parents.shape or groups.ndim != 1:
            raise ValueError(
                "groups and parents must be 1-D arrays of the same length, "
                f"got {groups.shape} and {parents.shape}"
            )
        self.size = len(groups)
        self._sub = _Members(groups) if self.size else None
        self._cat = _Members(parents) if self.size else None

    def sample(self, index: int, rng: np.random.Generator) -> int:
        """Another product's index to pair with product ``index``'s image (or text).

        Args:
            index: the product.
            rng: the random generator.

        Returns:
            A product index different from ``index``.

        Raises:
            ValueError: ``index`` out of range, or a catalog of fewer than 2 products.
        """
        if self.size < 2:
            raise ValueError(f"an ITM negative needs at least 2 products, the dataset has {self.size}")
        index = int(index)
        if not 0 <= index < self.size:
            raise ValueError(f"product index {index} out of range for {self.size} products")
        for members in (self._sub, self._cat):
            other = members.other(index, rng)
            if other is not None:
                return other
        j = int(rng.integers(self.size - 1))
        return j if j < index else j + 1

    def sample_other_title(self, index: int, titles: np.ndarray, rng: np.random.Generator,
                           tries: int = 32) -> int:
        """:meth:`sample`, never a product with ``index``'s title (a same-title twin is not
        a wrong answer): redrawn up to ``tries`` times, then any product of another title
        (``index``'s own draw when every product shares it).

        Args:
            index: the product.
            titles: (N,) title codes (:func:`kaleido.contrastive.title_codes`).
            rng: the random generator.
        """
        j = self.sample(index, rng)
        for _ in range(tries):
            if titles[j] != titles[index]:
                return j
            j = self.sample(index, rng)
        if titles[j] == titles[index]:
            others = np.flatnonzero(titles != titles[index])
            j = int(others[rng.integers(len(others))]) if len(others) else j
        return j


def itm_negative(index: int, groups, parents, rng: np.random.Generator) -> int:
    """One ITM negative for product ``index`` (see :class:`NegativeSampler`).

    Builds the index on every call (O(N log N)); for many draws build a
    :class:`NegativeSampler` once and call its ``sample``.

    Args:
        index: the product.
        groups: (N,) subcategory labels.
        parents: (N,) category labels.
        rng: the random generator.

    Returns:
        Another product's index: same subcategory if possible, else same category, else any.
    """
    return NegativeSampler(groups, parents).sample(index, rng)
