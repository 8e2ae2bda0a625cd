"""The demo's upload checks: images and catalog uploads (table + zip), the unsafe ones refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from kaleido.demo.uploads import UploadError, UploadLimits, read_image_upload, unpack_catalog_upload

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def _jpeg(size=(40, 30), colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _table(n: int = 3) -> bytes:
    t = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False).head(n)
    return t.to_csv(index=False).encode(), t


def test_image_upload_decodes_rgb_and_names_what_is_wrong():
    image = read_image_upload(_jpeg(), "a.jpg")
    assert image.mode == "RGB" and image.size == (40, 30)
    png = io.BytesIO()
    Image.new("LA", (8, 8)).save(png, "PNG")
    assert read_image_upload(png.getvalue()).mode == "RGB"
    with pytest.raises(UploadError, match="empty"):
        read_image_upload(b"", "e.jpg")
    with pytest.raises(UploadError, match="not a readable image"):
        read_image_upload(b"GIF89a but not really", "x.gif")
    with pytest.raises(UploadError, match="not a readable image"):
        read_image_upload(_jpeg()[:200], "cut.jpg")                 # truncated
    with pytest.raises(UploadError, match="limit is 1 MB"):
        read_image_upload(b"x" * (2 * 2**20), "big.jpg", UploadLimits(image_bytes=2**20))
    with pytest.raises(UploadError, match="pixels"):
        read_image_upload(_jpeg((300, 300)), "wide.jpg", UploadLimits(image_pixels=10_000))


def test_catalog_upload_unpacks_a_table_and_its_images(tmp_path):
    data, table = _table()
    images = {rel: (SAMPLE / rel).read_bytes() for rel in table["image"]}
    out = unpack_catalog_upload(data, _zip({**images, "notes.txt": b"ignored"}), tmp_path / "up")
    assert (out / "products.csv").is_file()
    assert all((out / rel).is_file() for rel in table["image"]) and not (out / "notes.txt").exists()


@pytest.mark.parametrize("name", ["../evil.jpg", "/abs/evil.jpg", "images/../../evil.jpg", "C:/evil.jpg"])
def test_zip_entries_outside_the_folder_are_refused(tmp_path, name):
    data, _ = _table()
    with pytest.raises(UploadError, match="outside the folder"):
        unpack_catalog_upload(data, _zip({name: _jpeg()}), tmp_path / "up")
    assert not (tmp_path / "evil.jpg").exists()


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path):
    data, _ = _table()
    bomb = _zip({"images/bomb.jpg": b"\0" * (30 * 2**20)})   # 30 MB of zeros compress ~1000x
    with pytest.raises(UploadError, match="zip bomb"):
        unpack_catalog_upload(data, bomb, tmp_path / "a")
    many = _zip({f"images/{i}.jpg": b"x" for i in range(12)})
    with pytest.raises(UploadError, match="entries"):
        unpack_catalog_upload(data, many, tmp_path / "b", limits=UploadLimits(zip_files=10))
    with pytest.raises(UploadError, match="unpack to more than"):
        unpack_catalog_upload(data, _zip({"images/a.jpg": _jpeg((400, 400))}), tmp_path / "c",
                              limits=UploadLimits(unpacked_bytes=100))
    with pytest.raises(UploadError, match="not a zip"):
        unpack_catalog_upload(data, b"PK but no", tmp_path / "d")


def test_a_zip_link_is_refused(tmp_path):
    data, _ = _table()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("images/link.jpg")
        info.external_attr = (0o120777 << 16)   # a symlink entry
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UploadError, match="link"):
        unpack_catalog_upload(data, buf.getvalue(), tmp_path / "up")


def test_a_table_with_the_wrong_columns_gets_a_message(tmp_path):
    with pytest.raises(UploadError, match="cannot be read as a product table"):
        unpack_catalog_upload(b"name,price\nshirt,3\n", None, tmp_path / "a")
    with pytest.raises(UploadError, match="empty"):
        unpack_catalog_upload(b"", None, tmp_path / "b")
    with pytest.raises(UploadError, match="must be .csv"):
        unpack_catalog_upload(b"x", None, tmp_path / "c", table_name="products.exe")


def test_table_image_paths_must_stay_inside_the_upload(tmp_path):
    data, table = _table(2)
    images = {rel: (SAMPLE / rel).read_bytes() for rel in table["image"]}
    t = table.copy()
    t.loc[0, "image"] = str(SAMPLE / table["image"].iloc[0])          # an absolute path on the server
    with pytest.raises(UploadError, match="not inside the upload"):
        unpack_catalog_upload(t.to_csv(index=False).encode(), _zip(images), tmp_path / "a")
    t.loc[0, "image"] = "../other/" + table["image"].iloc[0]           # another upload's folder
    (tmp_path / "other" / "images").mkdir(parents=True)
    (tmp_path / "other" / table["image"].iloc[0]).write_bytes(images[table["image"].iloc[0]])
    with pytest.raises(UploadError, match="not inside the upload"):
        unpack_catalog_upload(t.to_csv(index=False).encode(), _zip(images), tmp_path / "b")


def test_a_damaged_zip_entry_gets_a_message_and_leaves_no_half_file(tmp_path):
    data, _ = _table(1)
    good = _zip({"images/a.jpg": _jpeg((200, 200), "blue") * 3})
    raw = bytearray(good)
    start = raw.find(b"images/a.jpg") + len("images/a.jpg")   # the first entry's data follows its local header name
    for i in range(start + 10, start + 60):
        raw[i] ^= 0xFF
    with pytest.raises(UploadError, match="damaged|not a zip"):
        unpack_catalog_upload(data, bytes(raw), tmp_path / "up")
    assert not (tmp_path / "up" / "images" / "a.jpg").exists()


def test_unpack_once_reuses_a_finished_folder(tmp_path):
    from kaleido.demo.uploads import unpack_once

    data, table = _table(2)
    archive = _zip({rel: (SAMPLE / rel).read_bytes() for rel in table["image"]})
    first = unpack_once(data, archive, tmp_path)
    marker = (first / ".done").stat().st_mtime_ns
    assert unpack_once(data, archive, tmp_path) == first and (first / ".done").stat().st_mtime_ns == marker
