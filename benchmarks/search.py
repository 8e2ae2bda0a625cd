"""Search benchmark (issue 12): two-stage search vs exhaustive Kaleido-BERT on the test split, then
the FAISS indexes at 42k products.

Part ``catalog`` (test split of fashion-products, one run): text-to-product queries (a seeded
sample of test titles; any product with the query's title is a hit). Per query, in turn:
exhaustive Kaleido-BERT (ITM of the query against every product), the dual encoder + re-rank of
its top K (each K of ``--k``) and the dual encoder alone, all through ``SearchEngine`` (text
encoding, FAISS and re-ranking included). Prints p50 / p95 latency, the speed-up of each two-stage
setting over exhaustive scoring, and full-catalog R@1/5/10 of each system on the same queries;
also the dual encoder's R@1/5/10 over every test title.

Part ``scale`` (the 42,063 products of fashion-products-lowres): build time, serialised size,
resident memory and single-query p50 / p95 of the exact (IndexFlatIP) and approximate (HNSW, IVF)
indexes, and the approximate ones' recall@10 against exact search. The dual encoder's image
tower reads saliency + kaleido patches (about 1 product/s to extract on this CPU, i.e. ~12 h for
42k), so these embeddings are the linear reference's (one pooled whole-image feature, cached
and resumable, mapped to its 256-d space); the queries are its title embeddings. Text encoding
is timed on the dual encoder's text tower (the serving path), and added to the search time of
each index for the end-to-end query latency.

    python benchmarks/search.py catalog --catalog ../shared/data/fashion-products \\
        --split-file runs/split/fashion-products --cache CACHE --dual DUAL/final \\
        --reranker FT/retrieval [--queries 30] [--k 10 50] [--json OUT.json]
    python benchmarks/search.py scale --lowres ../shared/data/fashion-products-lowres \\
        --reference runs/baseline/linear-probe --features runs/lowres/global-features \\
        --dual DUAL/final [--queries 1000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kaleido.evaluation.kb101 import title_codes
from kaleido.evaluation.metrics import recall_at_k


def _percentiles(ms) -> dict:
    ms = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def _first_hit(hits, wanted: set) -> float:
    """1-based rank of the first hit whose product is in ``wanted`` (inf when none is returned)."""
    return next((h.rank for h in hits if h.product_id in wanted), float("inf"))


def _recalls(ranks) -> dict:
    return {k: round(100 * v, 2) for k, v in recall_at_k(np.asarray(ranks, dtype=np.float64)).items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def catalog_part(args) -> dict:
    from kaleido.data import load_catalog, split_products
    from kaleido.patches.cache import FeatureCache
    from kaleido.search import IndexConfig, SearchEngine, build_index

    torch.set_num_threads(args.threads)
    catalog = load_catalog(args.catalog)
    cache = FeatureCache(args.cache)
    products = [p for p in split_products(catalog, args.split_file, args.split) if p.id in cache]
    n = len(products)
    groups = title_codes([p.title for p in products])
    members: dict[int, set] = {}
    for p, g in zip(products, groups):
        members.setdefault(int(g), set()).add(p.id)
    index_dir = Path(args.index or tempfile.mkdtemp(prefix="kaleido-search-bench-"))
    build_index(args.dual, products, cache, index_dir, IndexConfig(kind="flat", titles=False), progress=True)
    engine = SearchEngine.load(index_dir, reranker=args.reranker, cache=args.cache)

    # the dual encoder alone over every test title (exact, from the index's embeddings)
    from kaleido.dual.encode import embed_texts
    from kaleido.evaluation.metrics import full_catalog_ranks

    text = embed_texts(engine.model, engine.processor, [p.title for p in products], progress=True)
    order = [engine.index.row_of(p.id) for p in products]
    every = full_catalog_ranks(engine.index.embeddings[order] @ text.T, groups=groups)["TIR"]

    rng = np.random.default_rng(args.seed)
    queries = rng.choice(n, size=min(args.queries, n), replace=False)
    engine.search_text(products[0].title, k=10, rerank=min(args.k))  # warm-up
    systems = {"exhaustive Kaleido-BERT": ("exhaustive", n)} | \
              {f"dual top {k} + Kaleido-BERT re-rank": ("two-stage", k) for k in args.k} | \
              {"dual encoder alone": ("dual", 0)}
    ms = {name: [] for name in systems}
    ranks = {name: [] for name in systems}
    for j, q in enumerate(queries, 1):
        title, wanted = products[q].title, members[int(groups[q])]
        for name, (kind, k) in systems.items():
            start = time.perf_counter()
            if kind == "dual":
                hits = engine.search_text(title, k=10)
            else:
                hits = engine.search_text(title, k=max(k, 10) if kind == "two-stage" else n, rerank=k)
            ms[name].append(1000 * (time.perf_counter() - start))
            ranks[name].append(_first_hit(hits, wanted))
        print(f"query {j}/{len(queries)}: " + ", ".join(f"{name} {ms[name][-1]:.0f} ms" for name in systems),
              flush=True)
    exhaustive_p50 = float(np.percentile(ms["exhaustive Kaleido-BERT"], 50))
    rows = []
    for name in systems:
        row = {"system": name, **_percentiles(ms[name]),
               "speed-up (p50)": round(exhaustive_p50 / float(np.percentile(ms[name], 50)), 1), **_recalls(ranks[name])}
        rows.append(row)
    return {"products": n, "queries": int(len(queries)), "threads": args.threads, "rows": rows,
            "dual_all_titles": {"queries": n, **{k: round(100 * every[k], 2) for k in ("R@1", "R@5", "R@10")}}}


def scale_part(args) -> dict:
    from kaleido.baselines.features import image_features, title_embeddings
    from kaleido.baselines.linear_probe import LinearDualEncoder
    from kaleido.data import load_catalog
    from kaleido.dual.encode import embed_texts, load_dual
    from kaleido.search.config import IndexConfig
    from kaleido.search.index import exact_top_k, make_faiss_index
    from kaleido.search.measure import query_latencies, recall_against

    import faiss

    torch.set_num_threads(args.threads)
    catalog = load_catalog(args.lowres)
    products = list(catalog)
    ids, feats = image_features(catalog, products, args.features)
    reference = LinearDualEncoder.from_pretrained(Path(args.reference) / "model")
    with torch.no_grad():
        emb = reference.embed_image(torch.from_numpy(feats)).numpy().astype(np.float32)
    by_id = {p.id: p for p in products}
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(ids), size=min(args.queries, len(ids)), replace=False)
    titles = [by_id[ids[i]].title for i in sample]
    with torch.no_grad():
        queries = reference.embed_text(torch.from_numpy(title_embeddings(titles))).numpy().astype(np.float32)
    k = 10
    truth = exact_top_k(queries, emb, k)[1]

    dual, processor = load_dual(args.dual)
    embed_texts(dual, processor, titles[:5])  # warm-up
    encode_ms = []
    for t in titles[:args.encode_queries]:
        start = time.perf_counter()
        embed_texts(dual, processor, [t])
        encode_ms.append(1000 * (time.perf_counter() - start))

    settings = [("flat", IndexConfig(kind="flat"), [None])]
    settings += [(f"hnsw M={m}", IndexConfig(kind="hnsw", hnsw_m=m), args.ef_search) for m in args.hnsw_m]
    settings += [("ivf", IndexConfig(kind="ivf"), args.nprobe)]
    rows = []
    for name, cfg, knobs in settings:
        before = _rss_mb()
        start = time.perf_counter()
        index = make_faiss_index(emb, cfg.kind, cfg)
        build_s = time.perf_counter() - start
        memory = _rss_mb() - before
        size = len(faiss.serialize_index(index)) / 2**20
        for knob in knobs:
            setting = "exact"
            if cfg.kind == "hnsw":
                index.hnsw.efSearch, setting = knob, f"efSearch={knob}"
            elif cfg.kind == "ivf":
                index.nprobe = min(knob, index.nlist)
                name, setting = f"ivf nlist={index.nlist}", f"nprobe={index.nprobe}"
            found, ms = query_latencies(index, queries, k)
            recall = recall_against(found, truth)
            end_to_end = np.asarray(ms)[:len(encode_ms)] + np.asarray(encode_ms[:len(ms)])
            rows.append({"index": name, "setting": setting, "recall@10": round(recall, 4), **_percentiles(ms),
                         "with text encoding p50_ms": round(float(np.percentile(end_to_end, 50)), 2),
                         "with text encoding p95_ms": round(float(np.percentile(end_to_end, 95)), 2),
                         "build_s": round(build_s, 2), "size_mb": round(size, 1), "rss_mb": round(memory, 1)})
            print(rows[-1], flush=True)
        del index
    return {"products": len(ids), "unreadable": len(products) - len(ids), "queries": int(len(queries)),
            "threads": args.threads, "text_encoding": _percentiles(encode_ms), "rows": rows}


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    c = sub.add_parser("catalog", help="two-stage vs exhaustive on a split")
    c.add_argument("--catalog", type=Path, required=True)
    c.add_argument("--split-file", type=Path, required=True)
    c.add_argument("--split", default="test")
    c.add_argument("--cache", type=Path, required=True)
    c.add_argument("--dual", type=Path, required=True, help="kaleido dual train RUN/final")
    c.add_argument("--reranker", type=Path, required=True, help="Kaleido-BERT retrieval fine-tune")
    c.add_argument("--index", type=Path, default=None, help="index folder (default: a temporary one)")
    c.add_argument("--queries", type=int, default=30)
    c.add_argument("--k", type=int, nargs="+", default=[10, 50], help="re-ranked candidates per query")
    s = sub.add_parser("scale", help="FAISS indexes at 42k products")
    s.add_argument("--lowres", type=Path, required=True)
    s.add_argument("--reference", type=Path, required=True, help="kaleido baseline linear-probe run")
    s.add_argument("--features", type=Path, required=True, help="whole-image feature cache (resumable)")
    s.add_argument("--dual", type=Path, required=True, help="dual encoder whose text tower is timed")
    s.add_argument("--queries", type=int, default=1000)
    s.add_argument("--encode-queries", type=int, default=300)
    s.add_argument("--hnsw-m", type=int, nargs="+", default=[16, 32])
    s.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    s.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    for p in (c, s):
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = catalog_part(args) if args.part == "catalog" else scale_part(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    print(_table(result["rows"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
