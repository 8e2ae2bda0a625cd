"""Fashion-Gen HDF5 files: a streaming reader that groups poses by product, and a writer.

Schema (DESIGN.md): ``input_image`` (N, 256, 256, 3) uint8 and one row per image for
``input_productID``, ``input_name``, ``input_description``, ``input_category``,
``input_subcategory``, ``input_gender``, ``input_pose``, ... Strings are byte arrays
of shape (N, 1), not all valid UTF-8. One product has 1-6 images (poses), and the
rows of one product need not be adjacent. The reader never loads ``input_image``:
metadata is read in chunks, pixels one row at a time when an image is asked for.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
from PIL import Image

from .catalog import Catalog, CatalogError, LoadReport, Product
from .images import ImageLoadError

IMAGE_KEY = "input_image"
ID_KEY = "input_productID"
TEXT_KEYS = {"title": "input_name", "description": "input_description",
             "category": "input_category", "subcategory": "input_subcategory"}
ATTRIBUTE_KEYS = ("input_gender", "input_season", "input_brand", "input_department",
                  "input_composition")
STRING_KEYS = tuple(TEXT_KEYS.values()) + ATTRIBUTE_KEYS + ("input_pose", "input_concat_description")
REQUIRED_KEYS = (IMAGE_KEY, ID_KEY, "input_name", "input_category", "input_subcategory")
CHUNK_ROWS = 8192


def decode_text(raw, report: LoadReport | None = None, where: str = "") -> str:
    """Decode one Fashion-Gen string cell: UTF-8, else cp1252, else latin-1 (counted)."""
    if isinstance(raw, np.ndarray):
        raw = raw.reshape(-1)[0] if raw.size else b""
    if isinstance(raw, str):
        return " ".join(raw.split())
    if isinstance(raw, (int, float, np.integer, np.floating)):
        return str(raw)
    raw = bytes(raw).rstrip(b"\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        if report is not None:
            report.repair("non-UTF-8 text decoded with cp1252/latin-1 fallback", where)
    return " ".join(text.split())


def _product_id(value) -> str:
    value = np.asarray(value).reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return decode_text(value)
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


class HDF5ImageStore:
    """Reads single rows of ``input_image``; reopens the file in each worker process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None
        self._pid = None

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[IMAGE_KEY]

    def load(self, ref: int, min_side: int | None = None) -> Image.Image:
        # min_side: Fashion-Gen images are 256 px, never worth decoding smaller
        try:
            pixels = self._images()[int(ref)]
        except (OSError, IndexError, ValueError) as err:
            raise ImageLoadError(f"{self.describe(ref)}: cannot read ({err})") from err
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ImageLoadError(f"{self.describe(ref)}: expected HxWx3 uint8, "
                                 f"got {pixels.shape} {pixels.dtype}")
        return Image.fromarray(pixels)

    def exists(self, ref: int) -> bool:
        return 0 <= int(ref) < len(self._images())

    def describe(self, ref: int) -> str:
        return f"{self.path}[{IMAGE_KEY}][{int(ref)}]"

    def __getstate__(self):  # h5py handles do not pickle; workers reopen lazily
        return {"path": self.path, "_file": None, "_pid": None}


def load_fashiongen_catalog(path: str | Path, *, chunk_rows: int = CHUNK_ROWS) -> Catalog:
    """Stream a Fashion-Gen HDF5 file into a catalog of products grouped by productID.

    The title, description and categories of a product come from its first row;
    every row of the product becomes one image reference (its row number).

    Raises:
        CatalogError: unreadable file or missing keys (named).
    """
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as err:
        raise CatalogError(f"{path}: cannot open as HDF5 ({err})") from err
    report = LoadReport(source=str(path))
    with h5:
        missing = [k for k in REQUIRED_KEYS if k not in h5]
        if missing:
            raise CatalogError(f"{path}: missing Fashion-Gen key(s) {missing}; "
                               f"the file has {sorted(h5.keys())}")
        n = h5[ID_KEY].shape[0]
        if h5[IMAGE_KEY].shape[0] != n:
            raise CatalogError(f"{path}: {IMAGE_KEY} has {h5[IMAGE_KEY].shape[0]} rows "
                               f"but {ID_KEY} has {n}")
        report.rows = n
        rows_of: dict[str, list[int]] = defaultdict(list)  # insertion-ordered: first appearance
        first_row_meta: dict[str, dict] = {}
        keys = [k for k in STRING_KEYS if k in h5]
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            ids = h5[ID_KEY][start:stop]
            cols = {k: h5[k][start:stop] for k in keys}
            for offset in range(stop - start):
                row = start + offset
                pid = _product_id(ids[offset])
                rows_of[pid].append(row)
                if pid not in first_row_meta:
                    first_row_meta[pid] = {
                        k: decode_text(cols[k][offset], report, f"{pid} ({k})") for k in keys
                    }
    products = []
    for pid, rows in rows_of.items():
        meta = first_row_meta[pid]
        title = meta.get(TEXT_KEYS["title"], "")
        if not title:
            report.skip("empty title", pid, warn=False)
            continue
        attributes = {k.removeprefix("input_"): meta[k] for k in ATTRIBUTE_KEYS if meta.get(k)}
        products.append(Product(
            id=pid, title=title, images=tuple(rows),
            description=meta.get(TEXT_KEYS["description"], ""),
            category=meta.get(TEXT_KEYS["category"], ""),
            subcategory=meta.get(TEXT_KEYS["subcategory"], ""),
            attributes=attributes))
    report.products = len(products)
    return Catalog(products, HDF5ImageStore(path), report, name=path.stem)


class FashionGenWriter:
    """Write rows in the Fashion-Gen schema (used to convert catalogs and by the tests).

    Example::

        with FashionGenWriter("out.h5") as w:
            w.add(image, product_id=1, name=b"...", category=b"TOPS", subcategory=b"SHIRTS")
    """

    def __init__(self, path: str | Path, image_size: int = 256, compression: str | None = "lzf"):
        self.path = Path(path)
        self.size = image_size
        self.compression = compression
        self.rows = 0
        self._h5 = None

    def __enter__(self) -> "FashionGenWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5 = h5py.File(self.path, "w")
        s = self.size
        self._h5.create_dataset(IMAGE_KEY, shape=(0, s, s, 3), maxshape=(None, s, s, 3),
                                dtype=np.uint8, chunks=(1, s, s, 3), compression=self.compression)
        self._h5.create_dataset(ID_KEY, shape=(0, 1), maxshape=(None, 1), dtype=np.int64)
        self._h5.create_dataset("index", shape=(0, 1), maxshape=(None, 1), dtype=np.int64)
        self._h5.create_dataset("input_msrpUSD", shape=(0, 1), maxshape=(None, 1), dtype=np.float32)
        for key in STRING_KEYS:
            self._h5.create_dataset(key, shape=(0, 1), maxshape=(None, 1),
                                    dtype=h5py.string_dtype("ascii"))
        return self

    def add(self, image: np.ndarray, *, product_id: int, msrp: float = 0.0, **strings) -> None:
        """Append one image row. ``strings`` are keyed without the ``input_`` prefix
        (``name``, ``description``, ``category``, ...); ``str`` is UTF-8 encoded, ``bytes``
        are stored as given (so tests can write invalid UTF-8)."""
        if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
            raise ValueError(f"image must be ({self.size}, {self.size}, 3) uint8, "
                             f"got {image.shape} {image.dtype}")
        unknown = {f"input_{k}" for k in strings} - set(STRING_KEYS)
        if unknown:
            raise ValueError(f"unknown Fashion-Gen string fields {sorted(unknown)}")
        h5, i = self._h5, self.rows
        for key in h5:
            h5[key].resize(i + 1, axis=0)
        h5[IMAGE_KEY][i] = image
        h5[ID_KEY][i, 0] = int(product_id)
        h5["index"][i, 0] = i
        h5["input_msrpUSD"][i, 0] = msrp
        for key in STRING_KEYS:
            value = strings.get(key.removeprefix("input_"), b"")
            h5[key][i, 0] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self.rows += 1

    def __exit__(self, *exc) -> None:
        self._h5.close()


def square_image(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a white square (keeping the aspect ratio) and resize to ``size``."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(canvas.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def export_fashiongen(catalog: Catalog, out: str | Path, *, image_size: int = 256,
                      products: Iterable[Product] | None = None, progress: bool = True) -> LoadReport:
    """Write a catalog (every view of every product) as a Fashion-Gen-schema HDF5 file.

    Product ids must be integers (the schema stores ``input_productID`` as int64).
    Unreadable images are reported and skipped.

    Returns:
        A report whose ``rows`` are the images written and ``products`` their products.
    """
    from tqdm.auto import tqdm

    report = LoadReport(source=str(catalog.report.source))
    todo = list(catalog if products is None else products)
    bad = [p.id for p in todo if not p.id.lstrip("-").isdigit()]
    if bad:
        raise CatalogError(f"Fashion-Gen stores integer product ids; {len(bad)} are not, e.g. {bad[:5]}")
    written = set()
    with FashionGenWriter(out, image_size) as writer:
        views = catalog.iter_images(todo, report=report, all_views=True)
        for product, view, image in tqdm(views, total=sum(len(p.images) for p in todo),
                                         desc="export", unit="img", disable=not progress):
            writer.add(square_image(image, image_size), product_id=int(product.id),
                       name=product.title, description=product.description,
                       category=product.category.upper(), subcategory=product.subcategory.upper(),
                       pose=f"id_{view}", **{k.removeprefix("input_"): product.attributes.get(
                           k.removeprefix("input_"), "") for k in ATTRIBUTE_KEYS})
            written.add(product.id)
        report.rows, report.products = writer.rows, len(written)
    return report
