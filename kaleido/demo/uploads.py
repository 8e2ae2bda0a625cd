"""Uploads from the demo app, checked before anything reads them.

* :func:`read_image_upload`: bytes -> an RGB ``PIL.Image``, or :class:`UploadError` saying
  what is wrong (empty, too large, not an image, corrupt, too many pixels).
* :func:`unpack_catalog_upload`: a product table (CSV) plus a zip of its images -> a
  catalog folder. The zip is refused when an entry would land outside the folder (absolute
  paths, ``..``, links), when it holds too many files or would unpack to too many bytes,
  or when an entry is compressed suspiciously well (a zip bomb); only image files are
  unpacked. The table must load as a catalog (its columns are checked by the catalog loader).
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class UploadError(ValueError):
    """An upload that cannot be used; the message is meant for the user."""


@dataclass
class UploadLimits:
    image_bytes: int = 20 * 2**20          # one image upload
    image_pixels: int = 40_000_000         # decoded width x height
    table_bytes: int = 50 * 2**20
    zip_bytes: int = 190 * 2**20           # the compressed archive (the server caps uploads at 200 MB)
    zip_files: int = 50_000
    unpacked_bytes: int = 2 * 2**30        # everything unpacked
    ratio: float = 200.0                   # uncompressed / compressed size of one entry


def read_image_upload(data: bytes, name: str = "upload", limits: UploadLimits = UploadLimits()) -> Image.Image:
    """Decode an uploaded image (any mode -> RGB)."""
    if not data:
        raise UploadError(f"{name} is empty")
    if len(data) > limits.image_bytes:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is {limits.image_bytes / 2**20:.0f} MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
            fmt = probe.format
            if w * h > limits.image_pixels:
                raise UploadError(f"{name} is {w} x {h} pixels; the limit is {limits.image_pixels:,} pixels")
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except UploadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UploadError(f"{name} is not a readable image ({type(err).__name__}: {err})") from err
    image.info["format"] = fmt
    return image.convert("RGB")


def _safe_member(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's relative path, None for folders; UploadError for unsafe entries."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"the zip holds a link ({name}); links are not unpacked")
    if path.is_absolute() or name.startswith("/") or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UploadError(f"the zip entry {name!r} points outside the folder; refused")
    if info.is_dir():
        return None
    return path


def unpack_catalog_upload(table: bytes, images_zip: bytes | None, dest: str | Path,
                          table_name: str = "products.csv", limits: UploadLimits = UploadLimits()) -> Path:
    """Write the table and the zip's images into ``dest`` and check the catalog loads.

    Returns:
        ``dest`` (holding ``products.csv`` and the unpacked images).
    """
    from kaleido.data import CatalogError, load_catalog

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not table:
        raise UploadError(f"{table_name} is empty")
    if len(table) > limits.table_bytes:
        raise UploadError(f"{table_name} is {len(table) / 2**20:.1f} MB; the limit is {limits.table_bytes / 2**20:.0f} MB")
    suffix = Path(table_name).suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet", ".jsonl", ".json"):
        raise UploadError(f"{table_name}: the product table must be .csv, .parquet or .jsonl")
    (dest / f"products{suffix}").write_bytes(table)
    if images_zip:
        if len(images_zip) > limits.zip_bytes:
            raise UploadError(f"the zip is {len(images_zip) / 2**20:.0f} MB; the limit is {limits.zip_bytes / 2**20:.0f} MB")
        try:
            archive = zipfile.ZipFile(io.BytesIO(images_zip))
        except zipfile.BadZipFile as err:
            raise UploadError(f"the images file is not a zip archive ({err})") from err
        with archive:
            members = archive.infolist()
            if len(members) > limits.zip_files:
                raise UploadError(f"the zip holds {len(members):,} entries; the limit is {limits.zip_files:,}")
            total = 0
            plan = []
            for info in members:
                path = _safe_member(info)
                if path is None or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if info.compress_size and info.file_size / info.compress_size > limits.ratio and info.file_size > 2**20:
                    raise UploadError(f"the zip entry {info.filename!r} unpacks {info.file_size / info.compress_size:.0f}x "
                                      "its compressed size; refused as a likely zip bomb")
                total += info.file_size
                if total > limits.unpacked_bytes:
                    raise UploadError(f"the zip would unpack to more than {limits.unpacked_bytes / 2**30:.0f} GB; refused")
                plan.append((info, path))
            root = dest.resolve()
            for info, path in plan:
                target = (dest / path).resolve()
                if root not in target.parents:
                    raise UploadError(f"the zip entry {info.filename!r} points outside the folder; refused")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(info) as src, open(target, "wb") as out:
                        written = 0
                        while chunk := src.read(2**20):
                            written += len(chunk)
                            if written > info.file_size:   # the header lied about the size
                                raise UploadError(f"the zip entry {info.filename!r} is larger than it claims; refused")
                            out.write(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as err:
                    target.unlink(missing_ok=True)
                    raise UploadError(f"the zip entry {info.filename!r} is damaged ({type(err).__name__}: {err})") from err
    try:
        catalog = load_catalog(dest / f"products{suffix}")
    except (CatalogError, ValueError) as err:
        raise UploadError(f"{table_name} cannot be read as a product table: {err}") from err
    if not len(catalog):
        raise UploadError(f"{table_name} has no usable products")
    root = dest.resolve()
    for product in catalog:
        for ref in product.images:
            ref = str(ref)
            if Path(ref).is_absolute() or root not in (dest / ref).resolve().parents:
                raise UploadError(f"{table_name}: product {product.id}'s image {ref!r} is not inside the upload; "
                                  "image paths must be relative to the zip's root")
    return dest


def unpack_once(table: bytes, images_zip: bytes | None, parent: str | Path, table_name: str = "products.csv",
                limits: UploadLimits = UploadLimits()) -> Path:
    """:func:`unpack_catalog_upload` into ``parent/<digest of the bytes>``, done once: a folder
    whose unpacking finished (its ``.done`` marker) is reused, a half-written one is redone."""
    digest = hashlib.sha1(table + b"\0" + (images_zip or b"")).hexdigest()[:16]
    dest = Path(parent) / digest
    if (dest / ".done").is_file():
        return dest
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    unpack_catalog_upload(table, images_zip, dest, table_name, limits)
    (dest / ".done").write_text(table_name + "\n")
    return dest
