"""Text-preserving augmentations of cached patch features (the image views of ERNIE-ViL 2.0).

Each is a pure function of a seeded ``numpy.random.Generator``, applied in the dataset. None
changes colour (colour words are in the titles) or moves a patch: a view hides patches
(patch dropout, a whole level) and jitters the features with small gaussian noise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kaleido.dual.config import AugmentConfig


def patch_dropout(mask: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Hide each visible patch with probability ``rate``; at least one stays visible.

    Args:
        mask: (P,) bool, True = visible.
        rate: drop probability in [0, 1).
        rng: the generator.

    Returns:
        A new (P,) bool mask.
    """
    if rate <= 0:
        return mask.copy()
    out = mask & (rng.random(mask.shape) >= rate)
    return out if out.any() else _keep_one(mask, rng)


def level_drop(mask: np.ndarray, grids: Sequence[int], prob: float, rng: np.random.Generator) -> np.ndarray:
    """With probability ``prob`` hide every patch of one random level (never the last visible one).

    Args:
        mask: (P,) bool, True = visible, patches level by level as in the cache.
        grids: the grid sizes of the levels, e.g. ``[1, 2, 3, 4, 5]``.
        prob: chance of dropping a level.
        rng: the generator.

    Returns:
        A new (P,) bool mask.
    """
    out = mask.copy()
    if len(grids) < 2 or rng.random() >= prob:
        return out
    level = int(rng.integers(len(grids)))
    start = sum(g * g for g in grids[:level])
    out[start:start + grids[level] ** 2] = False
    return out if out.any() else mask.copy()


def feature_noise(features: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``features + N(0, (std * features.std())^2)``: noise relative to the product's own scale.

    Args:
        features: (P, D) float32.
        std: relative noise level (0 = unchanged).
        rng: the generator.

    Returns:
        A new (P, D) float32 array.
    """
    if std <= 0:
        return features.astype(np.float32, copy=True)
    scale = std * float(features.std())
    return (features + scale * rng.standard_normal(features.shape, dtype=np.float32)).astype(np.float32)


def image_view(features: np.ndarray, grids: Sequence[int], cfg: AugmentConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented view: level drop, then patch dropout, then noise.

    Args:
        features: (P, D) patch features of one product.
        grids: the patch levels.
        cfg: the augmentation settings (``enabled=False``: the clean patches).
        rng: the generator.

    Returns:
        ``(features (P, D) float32, mask (P,) bool)``.
    """
    mask = np.ones(len(features), dtype=bool)
    if not cfg.enabled:
        return features.astype(np.float32, copy=True), mask
    mask = level_drop(mask, grids, cfg.level_drop, rng)
    mask = patch_dropout(mask, cfg.patch_dropout, rng)
    return feature_noise(features, cfg.noise_std, rng), mask


def _keep_one(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(mask)
    visible = np.flatnonzero(mask)
    out[visible[int(rng.integers(len(visible)))] if len(visible) else 0] = True
    return out
