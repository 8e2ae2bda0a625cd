"""``kaleido index`` (build / add / info) and ``kaleido search``: the dual encoder's FAISS product
index, and text-to-product, image-to-product and product-to-text search over it."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from .common import add_catalog_args, catalog_config


def register(sub) -> None:
    index = sub.add_parser("index", help="FAISS product index of dual-encoder embeddings")
    cmds = index.add_subparsers(dest="index_command", required=True)

    p = cmds.add_parser("build", help="embed every product into a new index (resumable)")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, required=True, help="feature cache of the products")
    p.add_argument("--model", type=Path, required=True, help="a `kaleido dual train` RUN/final folder")
    p.add_argument("--out", type=Path, required=True, help="index folder")
    _split_args(p)
    p.add_argument("overrides", nargs="*", help="IndexConfig fields, e.g. kind=hnsw hnsw_m=32 exact_threshold=50000")
    p.set_defaults(func=cmd_build)

    p = cmds.add_parser("add", help="add products to an existing index without rebuilding it")
    p.add_argument("--index", type=Path, required=True, help="index folder")
    add_catalog_args(p)
    p.add_argument("--cache", type=Path, default=None, help="feature cache (default: the index's own)")
    _split_args(p)
    p.set_defaults(func=cmd_add)

    p = cmds.add_parser("info", help="what an index holds")
    p.add_argument("index", type=Path)
    p.set_defaults(func=cmd_info)

    p = cmds.add_parser("measure", help="recall@k vs latency of exact, HNSW and IVF indexes over an index's embeddings")
    p.add_argument("index", type=Path)
    p.add_argument("--queries", type=int, default=1000, help="title embeddings used as queries (seeded sample)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("overrides", nargs="*", help="IndexConfig fields, e.g. ivf_nlist=256 threads=1")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("search", help="search an index by text, by image, or a product's image for titles")
    p.add_argument("query", nargs="?", default=None, help="text query, e.g. 'red floral summer dress'")
    p.add_argument("--index", type=Path, required=True, help="index folder")
    p.add_argument("--product-image", default=None, metavar="ID", help="query by a product's image (its id)")
    p.add_argument("--image", type=Path, default=None, help="query by an image file (patches extracted with the "
                                                           "cache's saliency + backbone)")
    p.add_argument("--to-text", action="store_true", help="rank the catalog's titles for the image query")
    p.add_argument("--k", type=int, default=10, help="results")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata filter, e.g. category=Topwear or baseColour=Red|Pink (repeatable)")
    p.add_argument("--rerank", type=int, default=0, metavar="K", help="re-rank the top K by Kaleido-BERT")
    p.add_argument("--reranker", type=Path, default=None, help="fine-tuned Kaleido-BERT retrieval folder")
    p.add_argument("--cache", type=Path, default=None, help="feature cache (default: the index's own)")
    p.add_argument("--model", type=Path, default=None, help="dual encoder (default: the index's own)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_search)


def _split_args(p) -> None:
    p.add_argument("--split-file", type=Path, default=None, help="split.csv or its folder")
    p.add_argument("--split", default=None, choices=("train", "val", "test"), help="only this split")


def _catalog_products(args):
    from ..data import load_catalog, split_products

    if (args.split_file is None) != (args.split is None):
        raise ValueError("--split-file and --split go together")
    catalog = load_catalog(catalog_config(args))
    return catalog, split_products(catalog, args.split_file, args.split or "")


def cmd_build(args) -> int:
    from ..search import IndexConfig, build_index

    cfg = load_config(IndexConfig, None, list(args.overrides))
    catalog, products = _catalog_products(args)
    index = build_index(args.model, products, args.cache, args.out, cfg, image_store=catalog.store)
    info = index.info
    print(f"{args.out}: {info['kind']} index of {len(index):,} products ({info['dim']}-d), "
          f"built in {info['build_s']:.1f} s (FAISS {info['faiss_build_s']:.2f} s)")
    return 0


def cmd_add(args) -> int:
    from ..search import add_products

    catalog, products = _catalog_products(args)
    index, added = add_products(args.index, products, args.cache, image_store=catalog.store)
    print(f"{args.index}: added {added:,} products; {len(index):,} in all ({index.kind})")
    return 0


def cmd_info(args) -> int:
    from ..search.index import INFO_NAME

    file = args.index / INFO_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{args.index}: no {INFO_NAME}; not a product index")
    print(file.read_text().rstrip())
    return 0


def cmd_measure(args) -> int:
    import numpy as np

    from ..search import IndexConfig, ProductIndex
    from ..search.measure import format_curve, recall_latency_curve

    cfg = load_config(IndexConfig, None, list(args.overrides))
    index = ProductIndex.load(args.index)
    pool = index.text_embeddings if index.text_embeddings is not None else index.embeddings
    pick = np.random.default_rng(0).choice(len(pool), min(args.queries, len(pool)), replace=False)
    rows = recall_latency_curve(index.embeddings, pool[np.sort(pick)], args.k, cfg=cfg)
    source = "title" if index.text_embeddings is not None else "product image"
    print(f"{len(index):,} products, {len(pick):,} {source} queries, k={args.k}")
    print(format_curve(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"products": len(index), "queries": len(pick), "rows": rows}, indent=2) + "\n")
    return 0


def _filters(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--filter {item!r}: expected KEY=VALUE (e.g. category=Topwear)")
        out[key.strip()] = [v.strip() for v in value.split("|")]
    return out


def cmd_search(args) -> int:
    from ..data import decode_image
    from ..search import SearchEngine
    from ..search.engine import timed

    image = args.product_image
    if args.image is not None:
        if image is not None:
            raise ValueError("give --image or --product-image, not both")
        image = decode_image(args.image)
    if args.query is None and image is None:
        raise ValueError("give a text query, --product-image ID or --image PATH")
    if args.rerank and args.reranker is None:
        raise ValueError("--rerank K needs --reranker (a fine-tuned Kaleido-BERT retrieval folder)")
    engine = SearchEngine.load(args.index, model=args.model, cache=args.cache, reranker=args.reranker,
                               extractor="cache" if args.image is not None else None, device=args.device)
    if args.to_text:
        if image is None:
            raise ValueError("--to-text ranks titles for an image: give --product-image or --image")
        results, ms = timed(engine.search_product_to_text, image, k=args.k, rerank=args.rerank)
    else:
        hits, ms = timed(engine.search, text=args.query, image=image, k=args.k, filters=_filters(args.filter) or None,
                         rerank=args.rerank)
        results = [h.to_dict() for h in hits]
    if args.json:
        query = {"text": args.query, "product_image": args.product_image,
                 "image": str(args.image) if args.image else None, "filters": _filters(args.filter),
                 "rerank": args.rerank, "to_text": args.to_text}
        print(json.dumps({"query": query, "k": args.k, "took_ms": round(ms, 2), "results": results}, indent=2))
        return 0
    for r in results:
        extra = f"  rerank {r['rerank_score']:.3f}" if r.get("rerank_score") is not None else ""
        if args.to_text:
            print(f"{r['rank']:>3}. {r['score']:.3f}{extra}  {r['text']}")
        else:
            print(f"{r['rank']:>3}. {r['score']:.3f}{extra}  {r['product_id']:>8}  {r['title']}  "
                  f"[{r['category']} / {r['subcategory']}]")
    print(f"({len(results)} results in {ms:.1f} ms)")
    return 0
