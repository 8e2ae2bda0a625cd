"""Picture of one product's pre-alignments: the image, its patches and the aligned words."""

from __future__ import annotations

from PIL import Image, ImageDraw

from ..patches.visualize import LEVEL_COLOURS


def draw_alignments(image: Image.Image, record: dict, positions, title: str,
                    panel: int = 256) -> Image.Image:
    """One panel per aligned word: its chosen patch at every level, outlined and labelled.

    Args:
        image: the product photo.
        record: ``{"caption", "pairs": [...]}`` as stored by the builder.
        positions: (P, 5) normalised patch positions of the product.
        title: the product's own text, printed under the panels.
    """
    scale = panel / max(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    base = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    words = list(dict.fromkeys(p["word"] for p in record["pairs"])) or ["(no aligned word)"]
    out = Image.new("RGB", (len(words) * (size[0] + 4), size[1] + 44), "white")
    for i, word in enumerate(words):
        canvas = base.copy()
        draw = ImageDraw.Draw(canvas)
        for p in record["pairs"]:
            if p["word"] != word:
                continue
            x1, x2, y1, y2 = positions[p["patch"]][:4]
            colour = LEVEL_COLOURS[(p["level"] - 1) % len(LEVEL_COLOURS)]
            draw.rectangle((x1 * size[0], y1 * size[1], x2 * size[0] - 1, y2 * size[1] - 1),
                           outline=colour, width=2)
        draw.text((4, 2), word, fill="black")
        out.paste(canvas, (i * (size[0] + 4), 0))
    draw = ImageDraw.Draw(out)
    draw.text((4, size[1] + 4), f"caption: {record['caption']}", fill="black")
    draw.text((4, size[1] + 22), f"title:   {title}", fill="black")
    return out
