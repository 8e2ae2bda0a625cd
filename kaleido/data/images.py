"""Robust product-image decoding.

Catalog photos arrive in every mode PIL knows: greyscale, palette, RGBA with a
transparent background, CMYK from print pipelines, 16-bit PNGs, phone photos that
rely on the EXIF orientation tag. Everything downstream wants an upright 8-bit RGB
image, and nothing should be able to blow up memory with a decompression bomb.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel budget per image (about 8k x 8k). Product photos are far smaller;
#: anything larger is treated as a decompression bomb and refused.
DEFAULT_MAX_PIXELS = 64_000_000

#: Colour that transparent pixels are composited onto: studio backgrounds are white.
BACKGROUND_RGB = (255, 255, 255)


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


def decode_image(
    data: bytes | Path | str,
    *,
    source: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image file or bytes into an upright 8-bit RGB PIL image.

    Args:
        data: a path, or the encoded bytes of the image.
        source: how to name the image in error messages (defaults to the path).
        max_pixels: refuse images with more pixels than this (decompression bombs).

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
    except OSError as err:
        raise ImageLoadError(f"{name}: cannot open ({err})") from err
    with fp:
        try:
            with warnings.catch_warnings():
                # PIL only warns between MAX_IMAGE_PIXELS and twice that; we refuse outright.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{name}: {width}x{height} = {width * height:,} pixels exceeds the "
                        f"limit of {max_pixels:,} (possible decompression bomb)"
                    )
                img.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(f"{name}: refused as a decompression bomb ({err})") from err
        except UnidentifiedImageError as err:
            raise ImageLoadError(f"{name}: not a recognised image file") from err
        except (OSError, SyntaxError, ValueError) as err:
            # Truncated JPEG/PNG data surfaces as OSError("image file is truncated ...").
            raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from err
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose an otherwise good image
        pass
    return _to_rgb(img)
