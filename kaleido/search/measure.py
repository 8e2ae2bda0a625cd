"""Recall against exact search vs per-query latency of approximate FAISS indexes, built in memory
from an index's stored embeddings (the curve that justifies ``IndexConfig.exact_threshold``)."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np

from kaleido.search.config import IndexConfig
from kaleido.search.index import exact_top_k, make_faiss_index


def query_latencies(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows found and per-query milliseconds, one query at a time (as a search box sends them)."""
    found, ms = [], []
    for q in queries:
        start = time.perf_counter()
        _, rows = index.search(q[None], k)
        ms.append(1000 * (time.perf_counter() - start))
        found.append(rows[0])
    return np.stack(found), np.asarray(ms)


def recall_against(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top k (``truth`` rows) that ``found`` holds."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _row(name: str, setting: str, found: np.ndarray, truth: np.ndarray, ms: np.ndarray, build_s: float,
         size: int) -> dict:
    recall = recall_against(found, truth)
    return {"index": name, "setting": setting, f"recall@{truth.shape[1]}": round(float(recall), 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4),
            "build_s": round(build_s, 3), "size_mb": round(size / 2**20, 2)}


def recall_latency_curve(embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                         hnsw_m: Sequence[int] = (16, 32), ef_search: Sequence[int] = (16, 32, 64, 128, 256),
                         ivf_nprobe: Sequence[int] = (1, 4, 16, 64), cfg: IndexConfig = IndexConfig()) -> list[dict]:
    """Exact (IndexFlatIP), HNSW and IVF over the same embeddings: recall@k against exact search,
    p50 / p95 single-query latency, build time and serialised size.

    Args:
        embeddings: (N, E) unit product embeddings (``ProductIndex.embeddings``).
        queries: (Q, E) unit query embeddings (e.g. title embeddings: text-to-product queries).
        k: results per query.
        hnsw_m: HNSW graph degrees to build.
        ef_search: HNSW query beams to try on each graph.
        ivf_nprobe: IVF cells visited to try (``cfg.ivf_nlist`` cells, 0 = 4 x sqrt(N)).
        cfg: the other build settings (efConstruction, threads).

    Returns:
        One dict per (index, setting): ``index``, ``setting``, ``recall@k``, ``p50_ms``,
        ``p95_ms``, ``build_s``, ``size_mb``.
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_top_k(q, embeddings, k)[1]

    def build(kind: str, c: IndexConfig):
        start = time.perf_counter()
        index = make_faiss_index(embeddings, kind, c)
        return index, time.perf_counter() - start, len(faiss.serialize_index(index))

    rows = []
    flat, secs, size = build("flat", cfg)
    found, ms = query_latencies(flat, q, k)
    rows.append(_row("flat", "exact", found, truth, ms, secs, size))
    for m in hnsw_m:
        index, secs, size = build("hnsw", dataclasses.replace(cfg, hnsw_m=m))
        for ef in ef_search:
            index.hnsw.efSearch = ef
            found, ms = query_latencies(index, q, k)
            rows.append(_row(f"hnsw M={m}", f"efSearch={ef}", found, truth, ms, secs, size))
    if ivf_nprobe:
        index, secs, size = build("ivf", cfg)
        for nprobe in ivf_nprobe:
            index.nprobe = min(nprobe, index.nlist)
            found, ms = query_latencies(index, q, k)
            rows.append(_row(f"ivf nlist={index.nlist}", f"nprobe={index.nprobe}", found, truth, ms, secs, size))
    return rows


def format_curve(rows: list[dict]) -> str:
    """The curve as a fixed-width table."""
    keys = list(rows[0])
    widths = [max(len(str(k)), *(len(str(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(str(k).ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)
