"""Product tables (CSV, Parquet, JSONL) mapped onto :class:`Product` by a column mapping."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..config import list_presets, load_config
from .catalog import Catalog, CatalogError, LoadReport, Product
from .images import DEFAULT_MAX_PIXELS, decode_image
from .table_reader import NOTED_MULTILINE, read_table

log = logging.getLogger(__name__)

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

    def load(self, ref: str, min_side: int | None = None) -> Image.Image:
        return decode_image(self.resolve(ref), max_pixels=self.max_pixels, min_side=min_side)

    def exists(self, ref: str) -> bool:
        return os.path.isfile(self.resolve(ref))

    def describe(self, ref: str) -> str:
        return str(self.resolve(ref))


def _positions(labels: list[str]) -> str:
    """``['line 3', 'line 5']`` -> ``lines 3, 5`` (other labels are listed as they are)."""
    kinds = {label.split(" ", 1)[0] for label in labels}
    if len(kinds) == 1 and kinds <= {"line", "row"}:
        return f"{kinds.pop()}s {', '.join(label.split(' ', 1)[1] for label in labels)}"
    return ", ".join(labels)


def load_table_catalog(
    path: str | Path,
    mapping: ColumnMapping | str = "auto",
    *,
    image_root: str | Path | None = None,
    check_files: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fmt: str | None = None,
    encoding: str = "auto",
) -> Catalog:
    """Load a product table into a :class:`Catalog`.

    Every row ends up as a product or in the report, named by its line (and id): rows
    that cannot be parsed, short rows, lines that were not UTF-8, missing ids, empty
    titles, missing image files.

    Args:
        path: the CSV / Parquet / JSONL file.
        mapping: a :class:`ColumnMapping`, a preset name, or ``"auto"`` (first preset that fits).
        image_root: folder that relative image paths start from (default: the table's folder).
        check_files: skip (and count) products whose image files do not exist. Decoding
            every image is left to ``kaleido data inspect``; later stages skip undecodable
            images as they meet them.
        max_pixels: decompression-bomb limit for the image store.
        fmt: force a format instead of guessing from the suffix.
        encoding: text encoding of CSV / JSONL files: ``auto`` (UTF-8, with lines that are
            not decoded as cp1252 / latin-1 and counted) or a codec name.

    Raises:
        CatalogError: unreadable table, missing columns (named), or duplicate ids (with
            their lines).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog table not found")
    report = LoadReport(source=str(path))
    table = read_table(path, report, fmt, encoding)
    df, header = table.frame, table.header
    if isinstance(mapping, str):
        if mapping == "auto":
            preset, mapping = detect_mapping(path, header)
            log.info("%s: using column preset %r", path, preset)
        else:
            mapping = column_preset(mapping)
    check_columns(path, header, mapping)

    ids = [_text(v) for v in df[mapping.id]]
    rows_of: dict[str, list[str]] = {}
    for pid, where in zip(ids, table.where):
        if pid:
            rows_of.setdefault(pid, []).append(where)
    dupes = [(i, w) for i, w in rows_of.items() if len(w) > 1]
    if dupes:
        examples = ", ".join(f"{i!r} x{len(w)} ({_positions(w)})" for i, w in dupes[:5])
        raise CatalogError(f"{path}: {len(dupes)} duplicate product ids in column "
                           f"{mapping.id!r}, e.g. {examples}")

    store = FileImageStore(Path(image_root) if image_root else path.parent, max_pixels)
    report.rows = len(df) + len(table.bad)
    id_column = header.index(mapping.id)
    for reason, where, fields in table.bad:
        pid = _text(fields[id_column]) if id_column < len(fields) else ""
        report.skip(reason, f"{where} (id {pid!r})" if pid else where)
    present = set(header)

    def column(name: str | None):
        return df[name] if name and name in present else [None] * len(df)

    products = []
    rows = zip(ids, table.where, column(mapping.title), column(mapping.description),
               column(mapping.category), column(mapping.subcategory), column(mapping.image),
               *(column(a) for a in mapping.attributes))
    for pid, where, title, desc, cat, sub, image, *attrs in rows:
        if not pid:
            report.skip("missing id", where)
            continue
        if where.startswith("lines "):
            report.note(NOTED_MULTILINE, f"{where} (id {pid!r})")
        title = _text(title)
        if not title:
            report.skip("empty title", pid, warn=False)
            continue
        images = _image_list(image)
        if not images:
            report.skip("no image path", pid)
            continue
        if check_files:
            found = [ref for ref in images if store.exists(ref)]
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
