"""Shared fixtures: the bundled sample, the shared real data (when present), tiny tables."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def shared_products() -> Path:
    path = SHARED_DATA / "fashion-products"
    if not (path / "products.csv").is_file():
        pytest.skip(f"real data not present at {path}")
    return path


@pytest.fixture
def small_catalog_dir(tmp_path) -> Path:
    """A writable copy of 12 sample products (CSV + images) that tests may damage."""
    import pandas as pd

    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False).head(12)
    (tmp_path / "images").mkdir()
    for rel in table["image"]:
        shutil.copyfile(SAMPLE / rel, tmp_path / rel)
    table.to_csv(tmp_path / "products.csv", index=False)
    return tmp_path
