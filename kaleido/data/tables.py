"""Product tables (CSV, Parquet, JSONL) mapped onto :class:`Product` by a column mapping."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from ..config import list_presets, load_config
from .catalog import Catalog, CatalogError, LoadReport, Product
from .images import DEFAULT_MAX_PIXELS, decode_image

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
                  ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
IMAGE_SEPARATOR = "|"


@dataclass
class ColumnMapping:
    """Which table column holds each product field.

    Attributes:
        id: unique product id.
        title: product title (rows with an empty title are skipped and counted).
        description: optional long text; ``None`` when the table has none.
        category: category of CR; ``None`` when the table has none.
        subcategory: subcategory of SUB; ``None`` when the table has none.
        image: image path(s) relative to the image root; several separated by ``|``
            in CSV, or a list in JSONL / Parquet.
        attributes: further columns kept as ``product.attributes`` tags.
        optional: mapped columns that may be absent from a table (others are required).
    """

    id: str = "id"
    title: str = "title"
    description: str | None = None
    category: str | None = "category"
    subcategory: str | None = "subcategory"
    image: str = "image"
    attributes: list[str] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        """Every mapped column name."""
        named = [self.id, self.title, self.description, self.category, self.subcategory, self.image]
        return [c for c in named if c] + list(self.attributes)

    def required(self) -> list[str]:
        """Mapped columns that must be present."""
        return [c for c in self.columns() if c not in self.optional]

    def describe(self) -> str:
        pairs = [("id", self.id), ("title", self.title), ("description", self.description),
                 ("category", self.category), ("subcategory", self.subcategory),
                 ("image", self.image), ("attributes", self.attributes)]
        return ", ".join(f"{k}={v!r}" for k, v in pairs if v)


def column_preset(name: str) -> ColumnMapping:
    """Load a named column mapping from ``kaleido/configs/columns``."""
    return load_config(ColumnMapping, name, component="columns")


def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """Read a product table with every value as a string (ids keep leading zeros)."""
    fmt = fmt or TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unknown table format {path.suffix!r}; "
                           f"use one of {sorted(set(TABLE_SUFFIXES))}")
    try:
        if fmt == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                               encoding_errors="replace", on_bad_lines="warn")
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise CatalogError(f"{path}: cannot read as {fmt} ({err})") from err
    raise CatalogError(f"{path}: unknown table format {fmt!r}")


def detect_mapping(path: Path, header: list[str]) -> tuple[str, ColumnMapping]:
    """Pick the first shipped column preset whose required columns the table has."""
    misses = {}
    for name in list_presets("columns"):
        mapping = column_preset(name)
        missing = [c for c in mapping.required() if c not in header]
        if not missing:
            return name, mapping
        misses[name] = missing
    detail = "; ".join(f"preset {n!r} lacks {m}" for n, m in misses.items())
    raise CatalogError(f"{path}: no column preset fits the columns {header}: {detail}. "
                       "Pass an explicit column mapping (--columns / CatalogConfig.columns).")


def check_columns(path: Path, header: list[str], mapping: ColumnMapping) -> None:
    """Raise a :class:`CatalogError` naming the file, missing columns and mapping."""
    missing = [c for c in mapping.required() if c not in header]
    if missing:
        raise CatalogError(
            f"{path}: missing column(s) {missing}; the table has {header}; "
            f"mapping used: {mapping.describe()}"
        )


def _text(value) -> str:
    """A clean string from a cell that may be NaN, None, a number or a string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return " ".join(str(value).split())


def _image_list(value) -> list[str]:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        items = _text(value).split(IMAGE_SEPARATOR)
    return [s.strip() for s in map(str, items) if s and s.strip()]


class FileImageStore:
    """Images referenced by path (absolute, or relative to a root folder)."""

    def __init__(self, root: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.max_pixels = max_pixels

    def resolve(self, ref: str) -> Path:
        path = Path(ref)
        return path if path.is_absolute() else self.root / path

    def load(self, ref: str) -> Image.Image:
        return decode_image(self.resolve(ref), max_pixels=self.max_pixels)

    def describe(self, ref: str) -> str:
        return str(self.resolve(ref))


def load_table_catalog(
    path: str | Path,
    mapping: ColumnMapping | str = "auto",
    *,
    image_root: str | Path | None = None,
    check_files: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fmt: str | None = None,
) -> Catalog:
    """Load a product table into a :class:`Catalog`.

    Args:
        path: the CSV / Parquet / JSONL file.
        mapping: a :class:`ColumnMapping`, a preset name, or ``"auto"`` (first preset that fits).
        image_root: folder that relative image paths start from (default: the table's folder).
        check_files: skip (and count) products whose image files do not exist. Decoding
            every image is left to ``kaleido data inspect``; later stages skip undecodable
            images as they meet them.
        max_pixels: decompression-bomb limit for the image store.
        fmt: force a format instead of guessing from the suffix.

    Raises:
        CatalogError: unreadable table, missing columns (named), or duplicate ids (with examples).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog table not found")
    df = read_table(path, fmt)
    header = [str(c) for c in df.columns]
    if isinstance(mapping, str):
        if mapping == "auto":
            preset, mapping = detect_mapping(path, header)
            log.info("%s: using column preset %r", path, preset)
        else:
            mapping = column_preset(mapping)
    check_columns(path, header, mapping)

    ids = df[mapping.id].map(_text)
    counts = Counter(i for i in ids if i)
    dupes = [(i, n) for i, n in counts.items() if n > 1]
    if dupes:
        examples = ", ".join(f"{i!r} x{n}" for i, n in dupes[:5])
        raise CatalogError(f"{path}: {len(dupes)} duplicate product ids in column "
                           f"{mapping.id!r}, e.g. {examples}")

    store = FileImageStore(Path(image_root) if image_root else path.parent, max_pixels)
    report = LoadReport(source=str(path), rows=len(df))
    present = set(header)

    def column(name: str | None):
        return df[name] if name and name in present else [None] * len(df)

    products = []
    rows = zip(ids, column(mapping.title), column(mapping.description), column(mapping.category),
               column(mapping.subcategory), column(mapping.image),
               *(column(a) for a in mapping.attributes))
    for row_no, (pid, title, desc, cat, sub, image, *attrs) in enumerate(rows, start=2):
        if not pid:
            report.skip("missing id", f"row {row_no}")
            continue
        title = _text(title)
        if not title:
            report.skip("empty title", pid, warn=False)
            continue
        images = _image_list(image)
        if not images:
            report.skip("no image path", pid)
            continue
        if check_files:
            found = [ref for ref in images if os.path.isfile(store.resolve(ref))]
            for ref in images:
                if ref not in found:
                    report.skip("missing image file", f"{pid} ({store.describe(ref)})")
            if not found:
                continue
            images = found
        attributes = {a: _text(v) for a, v in zip(mapping.attributes, attrs) if _text(v)}
        products.append(Product(id=pid, title=title, images=tuple(images),
                                description=_text(desc), category=_text(cat),
                                subcategory=_text(sub), attributes=attributes))
    report.products = len(products)
    # "missing image file" counts files; a product is dropped only when none of its files exist.
    return Catalog(products, store, report, name=path.parent.name or path.stem)
