"""One entry point for every catalog source: ``load_catalog(path_or_config)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog, CatalogError
from .fashiongen import load_fashiongen_catalog
from .images import DEFAULT_MAX_PIXELS
from .split import SplitConfig
from .tables import TABLE_SUFFIXES, ColumnMapping, load_table_catalog

HDF5_SUFFIXES = (".h5", ".hdf5")
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
        max_pixels: decompression-bomb limit per image.
    """

    path: str = "data/sample"
    columns: str = "auto"
    column_mapping: ColumnMapping | None = None
    image_root: str | None = None
    check_files: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS


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
        return load_fashiongen_catalog(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return load_table_catalog(path, cfg.column_mapping or cfg.columns,
                                  image_root=cfg.image_root, check_files=cfg.check_files,
                                  max_pixels=cfg.max_pixels)
    raise CatalogError(f"{path}: unknown catalog format {path.suffix!r}; expected a table "
                       f"({', '.join(sorted(TABLE_SUFFIXES))}) or HDF5 ({', '.join(HDF5_SUFFIXES)})")
