"""Colour features of a product photo: what ImageNet features lose.

Pooled ImageNet features barely keep colour (a linear probe on them names the catalog's
``baseColour`` 55 % of the time), so the tagger also reads a colour histogram of the
product's pixels. The background of a studio shot is estimated from the image border and
left out, so a white shirt on white is told apart from a small black belt on white by what
remains.

Features (:data:`COLOUR_DIM` values, each block sums to one or is a statistic):

* a joint HSV histogram of the chromatic foreground pixels (hue x saturation x value),
* a lightness histogram of the achromatic ones (greys, black, white),
* the mean and standard deviation of the foreground in CIE Lab,
* the foreground's share of the image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 96                   # the longer side the image is reduced to before counting
HUE_BINS, SAT_BINS, VAL_BINS = 24, 2, 3
GREY_BINS = 8
CHROMA_MIN = 0.18           # saturation below this (or value below VALUE_MIN) is achromatic
VALUE_MIN = 0.18
BACKGROUND_DELTA = 14.0     # Lab distance from the border colour that counts as foreground
MIN_FOREGROUND = 0.03       # below this share the whole image is counted instead

COLOUR_DIM = HUE_BINS * SAT_BINS * VAL_BINS + GREY_BINS + 6 + 1


def _small_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1], the longer side at most :data:`SIDE`."""
    if image.format == "JPEG":
        image.draft("RGB", (SIDE, SIDE))     # DCT-domain downscaling: decoding costs a fraction
    image = image.convert("RGB")
    scale = SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def foreground_mask(lab: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels far (in Lab) from the median colour of the image border."""
    border = np.concatenate([lab[:2].reshape(-1, 3), lab[-2:].reshape(-1, 3),
                             lab[:, :2].reshape(-1, 3), lab[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    return np.linalg.norm(lab - background, axis=-1) > BACKGROUND_DELTA


def colour_features(image: Image.Image) -> np.ndarray:
    """(:data:`COLOUR_DIM`,) float32 colour description of the product in ``image``."""
    from skimage.color import rgb2hsv, rgb2lab

    rgb = _small_rgb(image)
    lab = rgb2lab(rgb)
    mask = foreground_mask(lab)
    share = float(mask.mean())
    if share < MIN_FOREGROUND:
        mask = np.ones_like(mask)
    hsv = rgb2hsv(rgb)[mask]
    lab_fg = lab[mask]
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    chromatic = (s >= CHROMA_MIN) & (v >= VALUE_MIN)
    n = max(1, len(hsv))
    hue = np.minimum((h * HUE_BINS).astype(int), HUE_BINS - 1)
    sat = np.minimum(((s - CHROMA_MIN) / (1 - CHROMA_MIN) * SAT_BINS).astype(int), SAT_BINS - 1)
    val = np.minimum(((v - VALUE_MIN) / (1 - VALUE_MIN) * VAL_BINS).astype(int), VAL_BINS - 1)
    joint = np.bincount(((hue * SAT_BINS + sat) * VAL_BINS + val)[chromatic],
                        minlength=HUE_BINS * SAT_BINS * VAL_BINS) / n
    grey = np.bincount(np.minimum((v[~chromatic] * GREY_BINS).astype(int), GREY_BINS - 1),
                       minlength=GREY_BINS) / n
    stats = np.concatenate([lab_fg.mean(0), lab_fg.std(0)]) / 100.0 if len(lab_fg) else np.zeros(6)
    return np.concatenate([joint, grey, stats, [share]]).astype(np.float32)
