"""Pictures of where the captioner looked: one panel per generated word (Xu et al. fig. 2)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .captioner import CaptionResult


def upsample_attention(attention: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w) attention -> (T, H, W) bilinearly upsampled maps, each scaled to [0, 1].

    Args:
        attention: per-word attention over the encoder grid.
        size: (W, H) of the picture, PIL order.
    """
    if attention.numel() == 0:
        return np.zeros((0, size[1], size[0]), dtype=np.float32)
    maps = F.interpolate(attention.float()[:, None], size=(size[1], size[0]), mode="bilinear",
                         align_corners=False)[:, 0]
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def _colormap():
    from matplotlib import colormaps

    return colormaps["jet"]


def draw_attention(image: Image.Image, result: CaptionResult, out_path: str | Path | None = None,
                   box: Sequence[float] | None = None, cols: int = 5, panel: float = 2.2,
                   title: str | None = None):
    """A grid of panels: the encoded image, then each word with its attention heat map.

    Each map is upsampled bilinearly from the encoder grid and scaled to its own
    maximum; the number beside the word is the largest attention weight of one cell.

    Args:
        image: the image that was captioned.
        result: its caption.
        out_path: write a PNG here when given.
        box: the ``(x0, y0, x1, y1)`` box the image was cropped to before encoding (the
            attention grid covers the box); None = whole image.
        cols: panels per row.
        panel: panel size in inches.
        title: figure title (default: the caption).

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg)

    image = image.convert("RGB")
    if box is not None:
        image = image.crop(tuple(int(round(float(v))) for v in box))
    heat = upsample_attention(result.attention, image.size)
    n = 1 + len(result.words)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(panel * cols, panel * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    pixels = np.asarray(image)
    cmap = _colormap()
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(pixels)
    axes[0].set_title("input", fontsize=10)
    for i, word in enumerate(result.words):
        ax = axes[i + 1]
        ax.imshow(pixels)
        overlay = cmap(heat[i])           # (H, W, 4) RGBA
        overlay[..., 3] = 0.7 * heat[i]   # unattended pixels stay visible
        ax.imshow(overlay)
        peak = float(result.attention[i].max())
        ax.set_title(f"{word}  ({peak:.2f})", fontsize=10)
    fig.suptitle(title if title is not None else (result.text or "(empty caption)"), fontsize=11)
    fig.tight_layout()
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=100)
    return fig
