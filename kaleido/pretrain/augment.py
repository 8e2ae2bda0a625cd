"""ViLT's image augmentation on a cache of raw-pixel patches (``kaleido patches extract --config vilt``).

ViLT (Kim et al. 2021) trains on RandAugment'ed images, leaving out two of its policies that
can make the caption wrong: colour inversion (titles name colours) and cutout (it can erase a
small object the text names). ``torchvision.transforms.RandAugment`` has neither in its op
space (identity, shears, translations, rotation, brightness, colour, contrast, sharpness,
posterize, solarize, autocontrast, equalize), so it is ViLT's policy as it stands.

A pixel cache holds one grid of cells, each cell's pixels flattened in [-1, 1]; the cells tile
the image row-major, so the image is reassembled, augmented as a whole (a rotation moves
pixels across cells, as on the photo) and cut into the same cells again. Each sample draws
its ops from the dataset's per-sample generator, so a run stays a pure function of
``(seed, epoch, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import RandAugment

WHITE = [255, 255, 255]  # the fill where a shear, shift or rotation uncovers the frame: the studio background


@dataclass
class AugmentConfig:
    """Image augmentation of pre-training (training samples only, never validation).

    randaugment: ViLT's RandAugment on the image; needs a raw-pixel cache with one grid
        (``patches.backbone.name=pixels``), since CNN features cannot be augmented after the fact.
    num_ops / magnitude: RandAugment's N and M (ViLT: 2 and 9).
    """

    randaugment: bool = False
    num_ops: int = 2
    magnitude: int = 9

    def __post_init__(self):
        if self.num_ops < 1 or not 0 <= self.magnitude <= 30:
            raise ValueError(f"augment.num_ops must be >= 1 and augment.magnitude in [0, 30], got "
                             f"{self.num_ops} and {self.magnitude}")


class PixelRandAugment:
    """RandAugment on the image that a pixel cache's cells tile.

    Args:
        grid: cells per side (the cache's only grid, e.g. 7).
        size: pixels per cell side (``feature_dim == 3 * size * size``).
        num_ops, magnitude: RandAugment's N and M.
    """

    def __init__(self, grid: int, size: int, num_ops: int = 2, magnitude: int = 9):
        self.grid, self.size = grid, size
        self.op = RandAugment(num_ops=num_ops, magnitude=magnitude, fill=WHITE)

    @classmethod
    def for_cache(cls, meta: dict, cfg: AugmentConfig) -> "PixelRandAugment":
        """The augmentation of a cache (its ``meta.json``); a clear error for a cache it cannot augment."""
        backbone = (meta.get("config") or {}).get("backbone", {}).get("name")
        grids, dim = list(meta.get("grids", [])), int(meta.get("feature_dim", 0))
        size = math.isqrt(dim // 3) if dim else 0
        if backbone != "pixels" or len(grids) != 1 or 3 * size * size != dim:
            raise ValueError(f"augment.randaugment needs a raw-pixel cache with one grid (`kaleido patches "
                             f"extract --config vilt`); this cache has backbone {backbone!r}, grids {grids}, "
                             f"{dim}-d features: CNN features cannot be augmented after extraction")
        return cls(grids[0], size, cfg.num_ops, cfg.magnitude)

    def image(self, features: np.ndarray) -> torch.Tensor:
        """(g*g, 3*s*s) cells in [-1, 1] -> (3, g*s, g*s) uint8 image."""
        g, s = self.grid, self.size
        if features.shape != (g * g, 3 * s * s):
            raise ValueError(f"expected {g * g} cells of {3 * s * s} values, got {features.shape}")
        cells = torch.from_numpy(np.asarray(features, dtype=np.float32)).view(g, g, 3, s, s)
        image = cells.permute(2, 0, 3, 1, 4).reshape(3, g * s, g * s)  # (C, row, y, col, x) -> (C, H, W)
        return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def cells(self, image: torch.Tensor) -> np.ndarray:
        """The inverse of :meth:`image`."""
        g, s = self.grid, self.size
        x = image.float() / 127.5 - 1
        return x.view(3, g, s, g, s).permute(1, 3, 0, 2, 4).reshape(g * g, 3 * s * s).numpy()

    def __call__(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augmented cells; the ops and their signs come from ``rng``."""
        seed = int(rng.integers(2**31 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.op(self.image(features))
        return self.cells(out)
