"""Deterministic train / val / test split by product id, written once and read by every stage.

Within each category, products are ordered by a salted hash of their id and cut at
the configured fractions. So the split is reproducible from the ids alone, stratified
(every category with enough products appears in every split), independent of the
table's row order, and all images of a product follow their product.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .catalog import Catalog, CatalogError

SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.csv"


@dataclass
class SplitConfig:
    """How products are assigned to splits.

    Attributes:
        train: fraction of each category's products in train.
        val: fraction in val; test gets the rest.
        seed: salt of the id hash; change it for a different (still deterministic) split.
        stratify_by: product field to stratify on (``category``, ``subcategory`` or ``none``).
    """

    train: float = 0.8
    val: float = 0.1
    seed: int = 0
    stratify_by: str = "category"

    def __post_init__(self) -> None:
        if not (0 < self.train < 1 and 0 <= self.val < 1 and self.train + self.val <= 1):
            raise ValueError(f"split fractions must satisfy 0 < train < 1, 0 <= val, "
                             f"train + val <= 1; got train={self.train}, val={self.val}")
        if self.stratify_by not in ("category", "subcategory", "none"):
            raise ValueError(f"stratify_by must be category, subcategory or none, "
                             f"got {self.stratify_by!r}")


def _rank(product_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{product_id}".encode()).hexdigest()


def assign_splits(catalog: Catalog, cfg: SplitConfig = SplitConfig()) -> dict[str, str]:
    """Map every product id to ``train``, ``val`` or ``test``.

    In a group of n products, round(n * train) go to train and round(n * val) to val,
    with train taking precedence, so a category of one product lands in train.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for p in catalog:
        key = "" if cfg.stratify_by == "none" else getattr(p, cfg.stratify_by)
        groups[key].append(p.id)
    assignment = {}
    for ids in groups.values():
        ids.sort(key=lambda i: _rank(i, cfg.seed))
        n = len(ids)
        n_train = max(1, round(n * cfg.train))
        n_val = min(n - n_train, round(n * cfg.val))
        for k, pid in enumerate(ids):
            assignment[pid] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return assignment


def write_split(catalog: Catalog, out_dir: str | Path, cfg: SplitConfig = SplitConfig(),
                keep: dict[str, str] | None = None) -> Path:
    """Assign splits and write ``split.csv`` (id, split) plus ``split.json`` (config, counts).

    Args:
        keep: ``{product id: split}`` of another catalog that shares ids with this one (e.g.
            ``read_split`` of fashion-products for fashion-products-lowres): those products keep
            that split, so a model trained on this catalog's train split never sees the other's
            val / test products; the rest are assigned as usual. ``split.json`` counts them.

    Returns:
        The path of ``split.csv``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    assignment = assign_splits(catalog, cfg)
    kept = Counter()
    for pid in assignment:
        if keep and pid in keep:
            assignment[pid] = keep[pid]
            kept[keep[pid]] += 1
    frame = pd.DataFrame({"id": [p.id for p in catalog],
                          "split": [assignment[p.id] for p in catalog]})
    path = out / SPLIT_FILE
    frame.to_csv(path, index=False)
    counts = Counter(frame["split"])
    meta = {"source": catalog.report.source, "products": len(catalog), "config": asdict(cfg),
            "counts": {s: counts.get(s, 0) for s in SPLITS}}
    if keep is not None:
        meta["kept"] = {s: kept.get(s, 0) for s in SPLITS}
    (out / "split.json").write_text(json.dumps(meta, indent=2))
    return path


def read_split(path: str | Path) -> dict[str, str]:
    """Read ``split.csv`` (or the folder holding it) into ``{product_id: split}``."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    if not path.is_file():
        raise CatalogError(f"{path}: split file not found; create it with `kaleido data split`")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != ["id", "split"]:
        raise CatalogError(f"{path}: expected columns ['id', 'split'], got {list(frame.columns)}")
    bad = sorted(set(frame["split"]) - set(SPLITS))
    if bad:
        raise CatalogError(f"{path}: unknown split names {bad}; expected {list(SPLITS)}")
    return dict(zip(frame["id"], frame["split"]))


def split_catalog(catalog: Catalog, split: dict[str, str], name: str) -> Catalog:
    """The products of ``catalog`` assigned to split ``name`` (ids absent from the split file
    are an error: the split was made for another catalog)."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    unknown = [p.id for p in catalog if p.id not in split]
    if unknown:
        raise CatalogError(f"{len(unknown)} products of {catalog.name} are not in the split file, "
                           f"e.g. {unknown[:5]}; was the split made for another catalog?")
    return catalog.subset(p.id for p in catalog if split[p.id] == name)


def split_products(catalog: Catalog, split_file, split: str, limit: int = 0) -> list:
    """The products of one split (all when ``split`` is empty), the first ``limit`` of them."""
    if split and split_file is None:
        raise ValueError(f"split {split!r} asked for but no --split-file given")
    products = list(split_catalog(catalog, read_split(split_file), split) if split else catalog)
    if split and not products:
        raise ValueError(f"split {split!r} of {split_file} has no products")
    return products[:limit] if limit else products
