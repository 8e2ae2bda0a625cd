import io

import numpy as np
import pytest
from PIL import Image

from kaleido.data.images import ImageLoadError, decode_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left strip is now on top


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "I;16"])
def test_every_mode_becomes_8bit_rgb(mode):
    img = Image.new("RGB", (16, 16), (200, 30, 30)).convert(mode) if mode != "I;16" else \
        Image.fromarray(np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16))
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (16, 16)
    assert np.asarray(out).dtype == np.uint8


def test_16bit_range_is_rescaled_not_clipped():
    arr = np.array([[0, 1000], [2000, 3000]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = np.asarray(decode_image(_encode(img, "PNG")))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and 0 < out[0, 1, 0] < out[1, 0, 0] < 255


def test_transparency_composites_onto_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    out = np.asarray(decode_image(_encode(img, "PNG")))
    assert tuple(out[4, 4]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (10, 20, 30)
    pal = img.convert("P")  # palette image with a transparency entry
    assert tuple(np.asarray(decode_image(_encode(pal, "PNG")))[4, 4]) == (255, 255, 255)


def test_decompression_bomb_is_refused_before_decoding():
    huge = _encode(Image.new("1", (20_000, 20_000)), "PNG")  # tiny file, 400 Mpx
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        decode_image(huge, source="bomb.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        decode_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5_000)


def test_broken_inputs_name_the_source(tmp_path):
    good = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    for name, pattern in [("trunc.jpg", "truncated"), ("text.jpg", "not a recognised image"),
                          ("absent.jpg", "not found")]:
        with pytest.raises(ImageLoadError, match=pattern) as err:
            decode_image(tmp_path / name)
        assert name in str(err.value)
