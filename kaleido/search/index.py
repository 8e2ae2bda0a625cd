"""A product index on disk: a FAISS index over the dual encoder's image embeddings, with the
embeddings and the product metadata beside it.

Layout of an index folder::

    index.json            kind, dim, count, the model and cache it was built from, the config
    index.faiss           IndexFlatIP (exact inner product) | IndexHNSWFlat | IndexIVFFlat
    embeddings.npy        (N, E) float32 unit image embeddings; row r = FAISS id r = metadata row r
    text_embeddings.npy   (N, E) float32 unit title embeddings (product-to-text search), when built
    products.parquet      id, title, category, subcategory, attributes (JSON), image, images (JSON)

Filtered searches (``category=Topwear``) are exact inner products over the stored embeddings of
the matching rows, whatever the index kind, so a filter never loses recall.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kaleido.search.config import IndexConfig

log = logging.getLogger(__name__)

INDEX_VERSION = 1
INFO_NAME, FAISS_NAME, META_NAME = "index.json", "index.faiss", "products.parquet"
EMBEDDINGS_NAME, TEXT_EMBEDDINGS_NAME = "embeddings.npy", "text_embeddings.npy"
_COLUMNS = ("id", "title", "category", "subcategory")


def make_faiss_index(embeddings: np.ndarray, kind: str, cfg: IndexConfig = IndexConfig()):
    """A FAISS inner-product index of ``kind`` holding ``embeddings`` (row r gets id r).

    Args:
        embeddings: (N, E) float32 unit vectors.
        kind: ``flat`` (exact), ``hnsw`` or ``ivf`` (trained on ``embeddings``).
        cfg: the HNSW / IVF parameters.

    Returns:
        The populated ``faiss.Index``.
    """
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
    elif kind == "ivf":
        if n == 0:
            raise ValueError("an IVF index is trained on the embeddings; there are none")
        nlist = min(cfg.ivf_nlist or max(1, int(4 * math.sqrt(n))), n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if n:
        index.add(x)
    return index


def product_metadata(products: Sequence, image_store=None) -> pd.DataFrame:
    """One metadata row per product (row order = FAISS ids).

    Args:
        products: :class:`~kaleido.data.Product` objects.
        image_store: the catalog's store, to record resolvable image paths (else the raw refs).
    """
    def name(ref) -> str:
        return image_store.describe(ref) if image_store is not None else str(ref)

    rows = [{"id": p.id, "title": p.title, "category": p.category or "", "subcategory": p.subcategory or "",
             "attributes": json.dumps({k: str(v) for k, v in (p.attributes or {}).items()}, sort_keys=True),
             "image": name(p.images[0]) if p.images else "",
             "images": json.dumps([name(r) for r in p.images])} for p in products]
    return pd.DataFrame(rows, columns=[*_COLUMNS, "attributes", "image", "images"])


class ProductIndex:
    """FAISS index + embeddings + metadata of one folder (see the module docstring).

    Args:
        faiss_index: the populated index.
        embeddings: (N, E) unit image embeddings, row = FAISS id.
        metadata: N rows of :func:`product_metadata`.
        info: the ``index.json`` content.
        text_embeddings: (N, E) unit title embeddings, or None.
    """

    def __init__(self, faiss_index, embeddings: np.ndarray, metadata: pd.DataFrame, info: dict,
                 text_embeddings: np.ndarray | None = None):
        if faiss_index.ntotal != len(embeddings) or len(metadata) != len(embeddings):
            raise ValueError(f"index of {faiss_index.ntotal} vectors, {len(embeddings)} embeddings and "
                             f"{len(metadata)} metadata rows: they must agree")
        self.faiss, self.embeddings, self.metadata, self.info = faiss_index, embeddings, metadata, info
        self.text_embeddings = text_embeddings
        self._rows = {pid: r for r, pid in enumerate(metadata["id"].astype(str))}
        self._lower: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def kind(self) -> str:
        return self.info["kind"]

    def row_of(self, product_id: str) -> int | None:
        """The row of a product id, or None when it is not indexed."""
        return self._rows.get(str(product_id))

    def product(self, row: int) -> dict:
        """The metadata of one row (attributes and images decoded)."""
        rec = self.metadata.iloc[int(row)].to_dict()
        rec["attributes"], rec["images"] = json.loads(rec["attributes"]), json.loads(rec["images"])
        return rec

    # ---------------------------------------------------------------- search

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product.

        Args:
            queries: (Q, E) float32 query embeddings.
            k: results per query (capped at the candidates).
            rows: restrict to these rows (exact search over their stored embeddings), or None
                (the FAISS index; approximate for hnsw / ivf).

        Returns:
            ``(scores (Q, k'), rows (Q, k'))``, best first; rows of -1 where an approximate
            index found fewer than ``k'``.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if rows is None:
            k = min(int(k), len(self))
            if k <= 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            scores, found = self.faiss.search(q, k)
            return scores, found.astype(np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        return exact_top_k(q, self.embeddings, k, rows)

    def filter_rows(self, filters: Mapping[str, str | Sequence[str]]) -> np.ndarray:
        """Rows whose metadata match every filter (case-insensitive; a list value = any of them).

        Args:
            filters: e.g. ``{"category": "Topwear", "baseColour": ["Red", "Pink"]}``; keys are
                ``id``, ``title``, ``category``, ``subcategory`` or attribute names.

        Returns:
            Sorted row indices.

        Raises:
            ValueError: a key that is neither a column nor an attribute of any product.
        """
        keep = np.ones(len(self), dtype=bool)
        for key, value in filters.items():
            wanted = {str(v).strip().lower() for v in ([value] if isinstance(value, str) else value)}
            keep &= np.isin(self._values(key), list(wanted))
        return np.flatnonzero(keep)

    def _values(self, key: str) -> np.ndarray:
        """(N,) lower-cased values of a column or attribute (cached)."""
        lookup = key.lower()
        if lookup not in self._lower:
            columns = {c.lower(): c for c in _COLUMNS}
            if lookup in columns:
                values = self.metadata[columns[lookup]].astype(str)
            else:
                attrs = [{k.lower(): v for k, v in json.loads(a).items()} for a in self.metadata["attributes"]]
                if not any(lookup in a for a in attrs):
                    known = sorted({k for a in self.metadata["attributes"] for k in json.loads(a)})
                    raise ValueError(f"unknown filter {key!r}; filter on {', '.join(_COLUMNS)} or an attribute "
                                     f"({', '.join(known) or 'none indexed'})")
                values = pd.Series([str(a.get(lookup, "")) for a in attrs])
            self._lower[lookup] = values.str.strip().str.lower().to_numpy()
        return self._lower[lookup]

    # ------------------------------------------------------------- mutation

    def add(self, embeddings: np.ndarray, metadata: pd.DataFrame, text_embeddings: np.ndarray | None = None) -> None:
        """Append products (FAISS ids continue from the current count; nothing is rebuilt).

        Raises:
            ValueError: ids already indexed, or missing title embeddings in an index that has them.
        """
        dupes = [pid for pid in metadata["id"].astype(str) if pid in self._rows]
        if dupes:
            raise ValueError(f"{len(dupes)} products are already indexed, e.g. {dupes[:5]}")
        if (self.text_embeddings is None) != (text_embeddings is None):
            raise ValueError("title embeddings must be given exactly when the index holds them")
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embeddings.shape[1] or len(x) != len(metadata):
            raise ValueError(f"embeddings of shape {x.shape} for {len(metadata)} products; the index is "
                             f"{self.embeddings.shape[1]}-d")
        if len(x):
            self.faiss.add(x)
        self.embeddings = np.concatenate([self.embeddings, x])
        if text_embeddings is not None:
            self.text_embeddings = np.concatenate([self.text_embeddings, np.asarray(text_embeddings, np.float32)])
        start = len(self.metadata)
        self.metadata = pd.concat([self.metadata, metadata], ignore_index=True)
        self._rows.update({pid: start + r for r, pid in enumerate(metadata["id"].astype(str))})
        self._lower.clear()
        self.info["count"] = len(self.embeddings)

    # ----------------------------------------------------------------- disk

    def save(self, path: str | Path) -> Path:
        """Write the folder; each file goes to a temporary name first, ``index.json`` last."""
        import faiss

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.faiss, str(path / f"{FAISS_NAME}.tmp"))
        os.replace(path / f"{FAISS_NAME}.tmp", path / FAISS_NAME)
        arrays = [(EMBEDDINGS_NAME, self.embeddings), (TEXT_EMBEDDINGS_NAME, self.text_embeddings)]
        for name, array in arrays:
            if array is not None:
                with open(path / f"{name}.tmp", "wb") as f:
                    np.save(f, np.asarray(array, np.float32))
                os.replace(path / f"{name}.tmp", path / name)
            elif (path / name).exists():
                (path / name).unlink()
        self.metadata.to_parquet(path / f"{META_NAME}.tmp", index=False)
        os.replace(path / f"{META_NAME}.tmp", path / META_NAME)
        self.info.update(version=INDEX_VERSION, count=len(self), dim=int(self.embeddings.shape[1]))
        (path / f"{INFO_NAME}.tmp").write_text(json.dumps(self.info, indent=2) + "\n")
        os.replace(path / f"{INFO_NAME}.tmp", path / INFO_NAME)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ProductIndex":
        """Read a folder written by :meth:`save` (``kaleido index build``)."""
        import faiss

        path = Path(path)
        if not (path / INFO_NAME).is_file():
            raise FileNotFoundError(f"{path}: no {INFO_NAME}; build the index with `kaleido index build`")
        info = json.loads((path / INFO_NAME).read_text())
        text = np.load(path / TEXT_EMBEDDINGS_NAME) if (path / TEXT_EMBEDDINGS_NAME).is_file() else None
        index = cls(faiss.read_index(str(path / FAISS_NAME)), np.load(path / EMBEDDINGS_NAME),
                    pd.read_parquet(path / META_NAME), info, text)
        if index.kind == "hnsw" and "config" in info:
            index.faiss.hnsw.efSearch = int(info["config"].get("hnsw_ef_search", 128))
        return index

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the query-time recall / latency trade-off of an approximate index."""
        if ef_search and self.kind == "hnsw":
            self.faiss.hnsw.efSearch = int(ef_search)
        if nprobe and self.kind == "ivf":
            self.faiss.nprobe = int(nprobe)


def exact_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int,
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product over ``embeddings`` (or its ``rows``), best first.

    Returns:
        ``(scores (Q, k'), rows (Q, k'))`` with ``k' = min(k, candidates)``.
    """
    rows = np.arange(len(embeddings)) if rows is None else rows
    k = min(int(k), len(rows))
    if k <= 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    sims = queries @ embeddings[rows].T                                           # (Q, R)
    if k < len(rows):
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]                       # (Q, k) unordered
    else:
        top = np.tile(np.arange(len(rows)), (len(sims), 1))
    part = np.take_along_axis(sims, top, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1).astype(np.float32), rows[np.take_along_axis(top, order, 1)]


def index_info(kind: str, cfg: IndexConfig, **extra) -> dict:
    """The ``index.json`` content of a new index."""
    return {"version": INDEX_VERSION, "kind": kind, "config": dataclasses.asdict(cfg), **extra}
