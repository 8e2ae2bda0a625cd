"""Robust product-image decoding.

Catalog photos arrive in every mode PIL knows: greyscale, palette, RGBA with a
transparent background, CMYK from print pipelines, 16-bit PNGs, phone photos that
rely on the EXIF orientation tag. Everything downstream wants an upright 8-bit RGB
image, and nothing should be able to blow up memory with a decompression bomb.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel budget per image (about 8k x 8k). Product photos are far smaller;
#: anything larger is treated as a decompression bomb and refused.
DEFAULT_MAX_PIXELS = 64_000_000

#: Colour that transparent pixels are composited onto: studio backgrounds are white.
BACKGROUND_RGB = (255, 255, 255)

#: ``image.info`` key of the (width, height) of the file an image was decoded smaller from.
ORIGINAL_SIZE = "original_size"

_OPEN_LOCK = threading.Lock()


class ImageLoadError(ValueError):
    """An image could not be read; the message names the source and the reason."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit or float: rescale the real value range to 0..255, not a clip.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).round().astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions are correct for these.
    return img.convert("RGB")


def original_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the file an image was decoded from: its own size unless
    :func:`decode_image` decoded it smaller (``min_side``)."""
    return tuple(image.info.get(ORIGINAL_SIZE, image.size))


def to_original(box, image: Image.Image) -> tuple[int, int, int, int]:
    """A pixel box of ``image`` in the pixels of the file it was decoded from (rounded)."""
    (w0, h0), (w, h) = original_size(image), image.size
    if (w0, h0) == (w, h):
        return tuple(int(v) for v in box)
    x0, y0, x1, y1 = box
    return (round(x0 * w0 / w), round(y0 * h0 / h), round(x1 * w0 / w), round(y1 * h0 / h))


def _open(fp) -> Image.Image:
    """``Image.open`` with PIL's own pixel limit off: :func:`decode_image` applies its
    ``max_pixels`` instead, so there is one limit. The limit is a module global of PIL,
    hence the lock (opening reads only the header; decoding happens outside it)."""
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def decode_image(
    data: bytes | Path | str,
    *,
    source: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Decode an image file or bytes into an upright 8-bit RGB PIL image.

    Args:
        data: a path, or the encoded bytes of the image.
        source: how to name the image in error messages (defaults to the path).
        max_pixels: refuse images with more pixels than this (decompression bombs). This is
            the only limit: PIL's own ``Image.MAX_IMAGE_PIXELS`` is not applied on top.
        min_side: decode a big image smaller, by the largest integer factor that keeps both
            sides at least ``min_side`` (JPEG: ``draft``, so the full size is never decoded;
            other formats: ``reduce`` after decoding). Images already smaller are unchanged.
            A reduced image carries its file's upright size in ``info["original_size"]``
            (see :func:`original_size`).

    Returns:
        An RGB image with EXIF orientation applied, fully loaded.

    Raises:
        ImageLoadError: missing file, not an image, truncated data, or too many pixels.
    """
    name = source or (str(data) if isinstance(data, (str, Path)) else "<bytes>")
    try:
        fp = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else open(data, "rb")
    except FileNotFoundError as err:
        raise ImageLoadError(f"{name}: file not found") from err
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise ImageLoadError(f"{name}: cannot open ({err})") from err
    with fp:
        try:
            img = _open(fp)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"{name}: {width}x{height} = {width * height:,} pixels exceeds the "
                    f"limit of {max_pixels:,} (possible decompression bomb; catalog.max_pixels)"
                )
            if min_side and img.format == "JPEG" and min(width, height) >= 2 * min_side:
                img.draft(img.mode, (min_side, min_side))  # decodes at 1/2, 1/4 or 1/8
            img.load()
        except ImageLoadError:
            raise
        except UnidentifiedImageError as err:
            raise ImageLoadError(f"{name}: not a recognised image file") from err
        except (OSError, SyntaxError, ValueError) as err:
            # Truncated JPEG/PNG data surfaces as OSError("image file is truncated ...").
            raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from err
        except Exception as err:  # noqa: BLE001 - PIL's decoders raise more than they document
            raise ImageLoadError(f"{name}: corrupt image ({type(err).__name__}: {err})") from err
    decoded = img.size
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose an otherwise good image
        pass
    if img.size != decoded:  # EXIF turned it by 90 degrees
        width, height = height, width
    try:
        img = _to_rgb(img)
    except Exception as err:  # noqa: BLE001 - e.g. a mode PIL cannot convert
        raise ImageLoadError(f"{name}: cannot convert {img.mode} to RGB ({err})") from err
    if min_side:
        factor = min(img.size) // min_side
        if factor >= 2:
            img = img.reduce(factor)
    if img.size != (width, height):
        img.info[ORIGINAL_SIZE] = (width, height)
    return img
