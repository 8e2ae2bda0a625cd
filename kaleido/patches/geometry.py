"""Kaleido patch geometry: the grids inside the saliency box and their 5-D positions.

Level ``g`` splits the box into a g x g grid, cells in row-major order (left to right,
then top to bottom). The default levels 1..5 give 1 + 4 + 9 + 16 + 25 = 55 patches;
a single level ``[8]`` is FashionBERT's fixed 8 x 8 grid.
"""

from __future__ import annotations

import numpy as np

KALEIDO_GRIDS = (1, 2, 3, 4, 5)


def num_patches(grids) -> int:
    """Total patches of the given grid sizes (55 for 1..5)."""
    return sum(g * g for g in grids)


def level_slices(grids) -> dict[int, slice]:
    """Where each grid's patches sit in the patch sequence: ``{grid: slice}``."""
    out, start = {}, 0
    for g in grids:
        out[g] = slice(start, start + g * g)
        start += g * g
    return out


def patch_levels(grids) -> np.ndarray:
    """(P,) int64: the index of each patch's level in ``grids`` (0 for the 1x1 patch)."""
    return np.concatenate([np.full(g * g, i, dtype=np.int64) for i, g in enumerate(grids)])


def patch_boxes(box, grids) -> np.ndarray:
    """Split ``box`` into the cells of every grid.

    Args:
        box: (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
        grids: grid sizes, e.g. (1, 2, 3, 4, 5).

    Returns:
        (P, 4) float64 boxes (x0, y0, x1, y1), level by level, row-major within a level.
    """
    x0, y0, x1, y1 = map(float, box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have positive width and height, got {box}")
    out = []
    for g in grids:
        if g < 1:
            raise ValueError(f"grid sizes must be >= 1, got {g}")
        xs = x0 + (x1 - x0) * np.arange(g + 1) / g
        ys = y0 + (y1 - y0) * np.arange(g + 1) / g
        for r in range(g):
            for c in range(g):
                out.append((xs[c], ys[r], xs[c + 1], ys[r + 1]))
    return np.asarray(out, dtype=np.float64)


def patch_positions(boxes: np.ndarray, image_size) -> np.ndarray:
    """The 5-D positions ``[x1, x2, y1, y2, w*h]`` normalised to the full image.

    Args:
        boxes: (P, 4) pixel boxes (x0, y0, x1, y1).
        image_size: (width, height) of the full image.

    Returns:
        (P, 5) float32 in [0, 1]: left, right, top, bottom and the normalised area.
    """
    w, h = image_size
    x1, x2 = boxes[:, 0] / w, boxes[:, 2] / w
    y1, y2 = boxes[:, 1] / h, boxes[:, 3] / h
    return np.stack([x1, x2, y1, y2, (x2 - x1) * (y2 - y1)], axis=1).astype(np.float32)


def integer_boxes(boxes: np.ndarray) -> np.ndarray:
    """Round float boxes to pixel crops of at least 1 x 1 (for crop mode)."""
    out = np.rint(boxes).astype(np.int64)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out
