"""One entry point for every catalog source: ``load_catalog(path_or_config)``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog, CatalogError
from .fashiongen import load_fashiongen_catalog
from .images import DEFAULT_MAX_PIXELS
from .split import SplitConfig
from .table_reader import TABLE_SUFFIXES
from .tables import ColumnMapping, load_table_catalog

log = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5")
NOTED_UNKNOWN_TOKENS = "titles with characters the tokenizer reads as [UNK] (kept as they are)"
TABLE_NAMES = ("products.csv", "products.parquet", "products.jsonl", "styles.csv")


@dataclass
class CatalogConfig:
    """Where a catalog comes from and how to read it.

    Attributes:
        path: a table (CSV / Parquet / JSONL), a Fashion-Gen ``.h5`` file, or a folder
            holding ``products.{csv,parquet,jsonl}`` or a single ``.h5`` file.
        columns: column preset name (``auto`` = first preset that fits the header).
        column_mapping: an explicit mapping; overrides ``columns`` when set.
        image_root: folder of relative image paths (default: the table's folder).
        check_files: skip products whose image files are missing (cheap ``stat``).
        max_pixels: decompression-bomb limit per image: larger images are refused (the only
            limit; PIL's own is not applied on top).
        encoding: text encoding of CSV / JSONL tables: ``auto`` (UTF-8; lines that are not
            are decoded as cp1252 / latin-1 and counted in the load report) or a Python
            codec name (``cp1252``, ``latin-1``, ``utf-16``, ...), used strictly.
    """

    path: str = "data/sample"
    columns: str = "auto"
    column_mapping: ColumnMapping | None = None
    image_root: str | None = None
    check_files: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    encoding: str = "auto"


@dataclass
class DataConfig:
    """Root of the data stage: which catalog and how it is split."""

    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


def resolve_catalog_path(path: str | Path) -> Path:
    """Turn a folder into the catalog file inside it; check that the file exists."""
    path = Path(path)
    if path.is_dir():
        for name in TABLE_NAMES:
            if (path / name).is_file():
                return path / name
        h5s = sorted(p for p in path.iterdir() if p.suffix in HDF5_SUFFIXES)
        if len(h5s) == 1:
            return h5s[0]
        raise CatalogError(f"{path}: no {' / '.join(TABLE_NAMES)} and not exactly one .h5 file "
                           f"(found {[p.name for p in h5s]})")
    if not path.exists():
        raise CatalogError(f"{path}: catalog not found")
    return path


def load_catalog(source: str | Path | CatalogConfig) -> Catalog:
    """Load a catalog from a path or a :class:`CatalogConfig`.

    Returns:
        The catalog; ``catalog.report`` counts what was skipped or repaired.

    Raises:
        CatalogError: a message naming the file and what is wrong with it.
    """
    cfg = source if isinstance(source, CatalogConfig) else CatalogConfig(path=str(source))
    path = resolve_catalog_path(cfg.path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        catalog = load_fashiongen_catalog(path)
    elif path.suffix.lower() in TABLE_SUFFIXES:
        catalog = load_table_catalog(path, cfg.column_mapping or cfg.columns,
                                     image_root=cfg.image_root, check_files=cfg.check_files,
                                     max_pixels=cfg.max_pixels, encoding=cfg.encoding)
    else:
        raise CatalogError(f"{path}: unknown catalog format {path.suffix!r}; expected a table "
                           f"({', '.join(sorted(TABLE_SUFFIXES))}) or HDF5 ({', '.join(HDF5_SUFFIXES)})")
    note_unknown_tokens(catalog)
    return catalog


def note_unknown_tokens(catalog: Catalog) -> int:
    """Count, in the load report, the titles that the offline tokenizer turns (partly) into
    ``[UNK]`` (Chinese characters, emoji, ...): they are kept, but the model reads less of them.

    ASCII never maps to ``[UNK]`` in the uncased WordPiece vocabulary, so only titles with
    other characters are tokenised, in one batch call; a missing tokenizer skips the check.

    Returns:
        The number of such titles.
    """
    suspects = [p for p in catalog if not p.title.isascii()]
    if not suspects:
        return 0
    try:
        from ..tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    except (ImportError, OSError, ValueError) as err:
        log.info("titles not checked against the tokenizer (%s)", err)
        return 0
    unk = tokenizer.unk_token_id
    ids = tokenizer([p.title for p in suspects], add_special_tokens=False)["input_ids"]
    flagged = [p for p, tokens in zip(suspects, ids) if unk in tokens]
    for product in flagged:
        catalog.report.note(NOTED_UNKNOWN_TOKENS, product.id)
    return len(flagged)
