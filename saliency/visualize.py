"""Pictures of a saliency result: the mask tinted over the image, the box drawn on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from saliency.detector import SaliencyResult

__all__ = ["mask_image", "overlay", "save_prediction", "side_by_side"]

TINT = (255, 0, 80)
BOX_COLOUR = (0, 200, 0)
#: A fallback box (the whole image) is drawn in another colour so it stands out.
FALLBACK_COLOUR = (255, 170, 0)


def mask_image(result: SaliencyResult) -> Image.Image:
    """The mask as an 8-bit greyscale image (white = foreground)."""
    return Image.fromarray(np.round(result.mask * 255).astype(np.uint8))  # (H, W) uint8 -> mode "L"


def overlay(image: Image.Image, result: SaliencyResult, alpha: float = 0.5) -> Image.Image:
    """The image with the mask tinted in and the box drawn.

    Args:
        image: the image ``result`` was computed on.
        result: its saliency result.
        alpha: tint strength where the mask is 1.

    Returns:
        An RGB image of the input's size; the box is green, or orange when it is
        the whole-image fallback.

    Raises:
        ValueError: the mask's size is not the image's.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    if result.mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {result.mask.shape} does not fit image {rgb.shape[:2]}")
    weight = alpha * result.mask[..., None]  # (H, W, 1)
    tinted = rgb * (1 - weight) + np.asarray(TINT, np.float32) * weight
    out = Image.fromarray(np.round(tinted).astype(np.uint8))
    x0, y0, x1, y1 = result.box
    width = max(1, round(min(out.size) / 112))
    colour = FALLBACK_COLOUR if result.fallback else BOX_COLOUR
    ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
    return out


def side_by_side(image: Image.Image, result: SaliencyResult, gap: int = 4) -> Image.Image:
    """Image | mask | overlay in one row, separated by ``gap`` white pixels."""
    panels = [image.convert("RGB"), mask_image(result).convert("RGB"), overlay(image, result)]
    w, h = panels[0].size
    out = Image.new("RGB", (3 * w + 2 * gap, h), (255, 255, 255))
    for i, panel in enumerate(panels):
        out.paste(panel, (i * (w + gap), 0))
    return out


def save_prediction(
    image: Image.Image, result: SaliencyResult, out_dir: str | Path, stem: str
) -> tuple[Path, Path]:
    """Write ``<stem>_mask.png`` and ``<stem>_overlay.png`` into ``out_dir``.

    Returns:
        The paths of the mask and of the overlay.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
    mask_image(result).save(mask_path)
    overlay(image, result).save(overlay_path)
    return mask_path, overlay_path
