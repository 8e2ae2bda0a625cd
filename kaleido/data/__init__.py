"""Catalogs of products: loading (tables, Fashion-Gen HDF5), images, splits, inspection."""

from .catalog import Catalog, CatalogError, LoadReport, Product
from .fashiongen import FashionGenWriter, export_fashiongen, load_fashiongen_catalog
from .images import ImageLoadError, decode_image
from .load import CatalogConfig, DataConfig, load_catalog
from .split import SplitConfig, assign_splits, read_split, split_catalog, split_products, write_split
from .tables import ColumnMapping, load_table_catalog

__all__ = [
    "Catalog", "CatalogConfig", "CatalogError", "DataConfig", "ColumnMapping", "FashionGenWriter",
    "ImageLoadError", "LoadReport", "Product", "SplitConfig", "assign_splits",
    "decode_image", "export_fashiongen", "load_catalog", "load_fashiongen_catalog",
    "load_table_catalog", "read_split", "split_catalog", "split_products", "write_split",
]
