"""Pictures of kaleido patches: the grids of every level drawn over the image."""

from __future__ import annotations

from PIL import Image, ImageDraw

from .geometry import patch_boxes

LEVEL_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")


def draw_patch_grids(image: Image.Image, box, grids, *, panel: int = 224,
                     mask=None) -> Image.Image:
    """One panel per level: the image, the saliency box and that level's grid.

    Args:
        image: the product photo.
        box: (x0, y0, x1, y1) the grids are cut from.
        grids: grid sizes, e.g. (1, 2, 3, 4, 5).
        panel: height of each panel in pixels.
        mask: optional (H, W) saliency mask in [0, 1], shown as a first panel.

    Returns:
        An RGB image with ``len(grids)`` (+1 with a mask) panels side by side.
    """
    scale = panel / image.height
    size = (max(1, round(image.width * scale)), panel)
    base = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    panels = []
    if mask is not None:
        panels.append(Image.fromarray((mask * 255).clip(0, 255).astype("uint8")).convert("RGB")
                      .resize(size, Image.Resampling.BILINEAR))
    for level, g in enumerate(grids):
        canvas = base.copy()
        draw = ImageDraw.Draw(canvas)
        colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
        for x0, y0, x1, y1 in patch_boxes(box, [g]) * scale:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=2)
        draw.text((4, 2), f"{g}x{g}", fill=colour)
        panels.append(canvas)
    out = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panel), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 4
    return out
