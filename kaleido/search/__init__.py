"""Catalog-scale search: a FAISS index of dual-encoder embeddings, metadata filters, and
Kaleido-BERT re-ranking of the top K.

    from kaleido.search import IndexConfig, SearchEngine, add_products, build_index
    build_index("runs/dual/final", catalog.products, "runs/cache", "runs/index", image_store=catalog.store)
    engine = SearchEngine.load("runs/index", reranker="runs/ft/retrieval")
    hits = engine.search_text("red floral summer dress", k=10, rerank=50, filters={"category": "Dress"})
"""

from .build import add_products, build_index, model_fingerprint
from .config import IndexConfig
from .engine import Hit, SearchEngine, cache_extractor
from .index import ProductIndex, exact_top_k, make_faiss_index, product_metadata

__all__ = [
    "Hit", "IndexConfig", "ProductIndex", "SearchEngine", "add_products", "build_index", "cache_extractor",
    "exact_top_k", "make_faiss_index", "model_fingerprint", "product_metadata",
]
