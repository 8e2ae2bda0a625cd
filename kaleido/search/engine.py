"""``SearchEngine``: text-to-product, image-to-product and product-to-text search over a product
index, with optional Kaleido-BERT re-ranking of the top K. It holds no model code: queries are
embedded by the dual encoder, recalled by the index, and re-scored by a Kaleido-BERT retrieval
task (its ITM match log-odds).

Image queries may be

- a product id: its stored embedding when indexed, else embedded from the engine's feature cache;
- precomputed patch features: a ``PatchFeatures`` (``.features`` (P, D), ``.positions`` (P, 5))
  or a ``(features, positions)`` pair, from the backbone the index's cache was built with;
- a ``PIL.Image``, when the engine has an ``extractor`` (a callable image -> PatchFeatures,
  e.g. :func:`cache_extractor`, which rebuilds the cache's own saliency + backbone pipeline);
- a 1-D array: an embedding already in the dual encoder's space.

    engine = SearchEngine.load("runs/index", reranker="runs/ft/retrieval")
    hits = engine.search_text("red floral summer dress", k=10, filters={"category": "Dress"}, rerank=50)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from kaleido.search.index import ProductIndex, exact_top_k


@dataclass
class Hit:
    """One search result.

    Attributes:
        rank: 1-based position in the results.
        product_id: the product.
        score: the dual encoder's cosine similarity to the query.
        rerank_score: the Kaleido-BERT match log-odds (re-ranked hits only, else None).
        title, category, subcategory, attributes, image: the product's metadata.
    """

    rank: int
    product_id: str
    score: float
    title: str
    category: str
    subcategory: str
    attributes: dict
    image: str
    rerank_score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def cache_extractor(cache) -> Callable:
    """An image -> ``PatchFeatures`` callable with the patch config a feature cache was built with
    (saliency, grids, backbone and its weights; no pre-training extras).

    Args:
        cache: a :class:`~kaleido.patches.cache.FeatureCache` or its folder.
    """
    import dataclasses

    from omegaconf import OmegaConf

    from kaleido.patches.cache import FeatureCache
    from kaleido.patches.extract import PatchConfig, PatchExtractor

    cache = FeatureCache(cache) if isinstance(cache, (str, Path)) else cache
    saved = cache.meta.get("config")
    if not saved:
        raise ValueError(f"{cache.root} does not record its patch config; extract the image's patches yourself "
                         "and pass them as (features, positions)")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PatchConfig), saved))
    extractor = PatchExtractor.from_config(dataclasses.replace(cfg, extras=False))
    if not cache.whole_image_dim:
        return lambda image: extractor.extract([image])[0]
    from kaleido.baselines.features import whole_image_extractor

    # the cache carries whole-image features: the query gets one too, by the same backbone weights
    whole = whole_image_extractor(cache.root / cache.meta["whole_image"][0])

    def extract(image):
        return dataclasses.replace(extractor.extract([image])[0], whole_image=whole(image))

    return extract


class SearchEngine:
    """Search over a :class:`ProductIndex` with a dual encoder, optionally re-ranked.

    Args:
        index: the product index.
        model, processor: the dual encoder that built it (:func:`kaleido.dual.load_dual`).
        cache: the indexed products' feature cache (re-ranking, and queries by a product id
            that is not indexed), or None.
        reranker: a Kaleido-BERT retrieval task (``kaleido.evaluation.evaluate.retrieval_task``), or None.
        rerank_processor: its :class:`~kaleido.model.KaleidoProcessor`.
        extractor: image -> PatchFeatures, for raw image queries, or None.
        rerank_batch_size: pairs per re-ranking forward pass.
    """

    def __init__(self, index: ProductIndex, model, processor, cache=None, reranker=None, rerank_processor=None,
                 extractor: Callable | None = None, rerank_batch_size: int = 64):
        self.index, self.model, self.processor = index, model.eval(), processor
        self.cache, self.extractor = cache, extractor
        self.reranker = reranker.eval() if reranker is not None else None
        self.rerank_processor, self.rerank_batch_size = rerank_processor, rerank_batch_size

    @classmethod
    def load(cls, index_dir: str | Path, model: str | Path | None = None, cache: str | Path | None = None,
             reranker: str | Path | None = None, extractor: Callable | str | None = None, device: str = "cpu",
             ef_search: int | None = None, nprobe: int | None = None) -> "SearchEngine":
        """Open an index and the models it needs, once.

        Args:
            index_dir: a ``kaleido index build`` folder.
            model: the dual encoder (default: the one recorded in the index).
            cache: the products' feature cache (default: the one recorded in the index, when it exists).
            reranker: a fine-tuned Kaleido-BERT retrieval folder (or a pre-training ``final/``
                with an ITM head) for ``rerank=K``.
            extractor: a callable image -> PatchFeatures, or ``"cache"`` for :func:`cache_extractor`.
            device: where the models run.
            ef_search, nprobe: query-time settings of an approximate index.
        """
        from kaleido.dual.encode import load_dual
        from kaleido.patches.cache import FeatureCache

        index = ProductIndex.load(index_dir)
        index.set_search_params(ef_search, nprobe)
        model = model or index.info.get("model")
        if not model:
            raise ValueError(f"{index_dir} does not record its dual encoder; pass model=")
        encoder, processor = load_dual(model, device)
        cache = cache or index.info.get("cache")
        features = FeatureCache(cache) if cache and Path(cache).is_dir() else None
        task = rerank_processor = None
        if reranker:
            from kaleido.evaluation.evaluate import retrieval_task
            from kaleido.finetune.run import load_processor

            if features is None:
                raise ValueError("re-ranking needs the products' patch features: pass the feature cache")
            task = retrieval_task(reranker).to(device)
            rerank_processor = load_processor(reranker, 64, features.meta["grids"])
        if extractor == "cache":
            if features is None:
                raise ValueError("extractor='cache' needs the feature cache")
            extractor = cache_extractor(features)
        return cls(index, encoder, processor, features, task, rerank_processor, extractor)

    # --------------------------------------------------------------- queries

    def embed_text(self, text: str) -> np.ndarray:
        """(E,) unit embedding of a text query."""
        from kaleido.dual.encode import embed_texts

        return embed_texts(self.model, self.processor, [text])[0]

    def _image(self, image) -> tuple[np.ndarray, tuple | None, int | None]:
        """(embedding, (features, positions) or None, its index row or None) of an image query."""
        from kaleido.dual.encode import embed_patches

        if isinstance(image, str):
            row = self.index.row_of(image)
            item = self.cache[image] if self.cache is not None and image in self.cache else None
            feats = (item.features, item.positions) if item is not None else None
            if row is not None:
                return self.index.embeddings[row], feats, row
            if item is None:
                raise ValueError(f"product {image!r} is neither indexed nor in the engine's feature cache")
            return embed_patches(self.model, self.processor, [item])[0], feats, None
        if isinstance(image, np.ndarray) and image.ndim == 1:
            return image.astype(np.float32), None, None
        if hasattr(image, "features"):
            item = image
        elif isinstance(image, (tuple, list)) and len(image) == 2:
            item = (np.asarray(image[0]), np.asarray(image[1]))
        elif hasattr(image, "convert"):  # a PIL image
            if self.extractor is None:
                raise ValueError("raw images need a feature extractor: SearchEngine.load(..., extractor='cache'), "
                                 "or pass precomputed patch features (features, positions)")
            item = self.extractor(image)
        else:
            raise TypeError(f"unsupported image query {type(image).__name__}: a product id, PatchFeatures, "
                            "(features, positions), a PIL image or an embedding")
        feats = (item.features, item.positions) if hasattr(item, "features") else item
        # the dual encoder gets the whole item (its whole-image feature too, when it reads one)
        return embed_patches(self.model, self.processor, [item])[0], feats, None

    # ---------------------------------------------------------------- search

    def search(self, text: str | None = None, image=None, k: int = 10, filters: Mapping | None = None,
               rerank: int = 0, exclude_self: bool = True) -> list[Hit]:
        """Products for a text and/or image query (both: the normalised sum of the embeddings).

        Args:
            text: the text query.
            image: an image query (see the module docstring).
            k: results to return.
            filters: metadata filters, e.g. ``{"category": "Topwear"}`` (see
                :meth:`ProductIndex.filter_rows`).
            rerank: re-score the top ``rerank`` by Kaleido-BERT (0 = no re-ranking); text
                queries pair the query with each candidate's image, image queries pair the
                query image with each candidate's title. Needs a reranker.
            exclude_self: leave an indexed query product out of its own results.

        Returns:
            Up to ``k`` hits: the re-ranked ones first (by ``rerank_score``), then the rest by ``score``.
        """
        if text is None and image is None:
            raise ValueError("give a text query, an image query or both")
        parts, feats, self_row = [], None, None
        if text is not None:
            parts.append(self.embed_text(text))
        if image is not None:
            emb, feats, self_row = self._image(image)
            parts.append(emb)
        query = np.sum(parts, 0)
        query = (query / max(np.linalg.norm(query), 1e-12)).astype(np.float32)
        rows = self.index.filter_rows(filters) if filters else None
        extra = 1 if (exclude_self and self_row is not None) else 0
        depth = max(k, rerank) + extra
        scores, found = self.index.search(query[None], depth, rows)
        keep = [(float(s), int(r)) for s, r in zip(scores[0], found[0]) if r >= 0 and not (extra and r == self_row)]
        keep = keep[:max(k, rerank)]
        rerank_scores: dict[int, float] = {}
        if rerank:
            top = [r for _, r in keep[:rerank]]
            rerank_scores = dict(zip(top, self._rerank_products(top, text, feats)))
            head = sorted(keep[:rerank], key=lambda sr: -rerank_scores[sr[1]])  # stable: ties keep dual order
            keep = head + keep[rerank:]
        return [self._hit(i + 1, row, s, rerank_scores.get(row)) for i, (s, row) in enumerate(keep[:k])]

    def search_text(self, query: str, k: int = 10, filters: Mapping | None = None, rerank: int = 0) -> list[Hit]:
        """Text-to-product search (see :meth:`search`)."""
        return self.search(text=query, k=k, filters=filters, rerank=rerank)

    def search_image(self, image, k: int = 10, filters: Mapping | None = None, rerank: int = 0,
                     exclude_self: bool = True) -> list[Hit]:
        """Image-to-product search ("more like this" / shop the look; see :meth:`search`)."""
        return self.search(image=image, k=k, filters=filters, rerank=rerank, exclude_self=exclude_self)

    def search_product_to_text(self, image, k: int = 10, texts: Sequence[str] | None = None,
                               rerank: int = 0) -> list[dict]:
        """Texts that describe an image: the index's titles (built with ``titles=True``), or ``texts``.

        Args:
            image: an image query (see the module docstring).
            k: results to return.
            texts: candidate texts to rank instead of the catalog's titles.
            rerank: re-score the top ``rerank`` (image, text) pairs by Kaleido-BERT.

        Returns:
            ``[{"rank", "text", "score", "rerank_score", "product_id"}]`` (``product_id`` of the
            title's product; None for given texts).
        """
        from kaleido.dual.encode import embed_texts

        emb, feats, _ = self._image(image)
        if texts is not None:
            candidates, owners = np.asarray(embed_texts(self.model, self.processor, list(texts))), None
        elif self.index.text_embeddings is not None:
            candidates, owners = self.index.text_embeddings, self.index.metadata["id"].astype(str).tolist()
            texts = self.index.metadata["title"].astype(str).tolist()
        else:
            raise ValueError("this index holds no title embeddings (built with titles=false); pass texts")
        scores, rows = exact_top_k(emb[None].astype(np.float32), candidates, max(k, rerank))
        keep = [(float(s), int(r)) for s, r in zip(scores[0], rows[0])]
        rerank_scores: dict[int, float] = {}
        if rerank:
            if feats is None:
                raise ValueError("re-ranking an image query needs its patch features")
            top = [r for _, r in keep[:rerank]]
            ids = [self.rerank_processor.encode_text(texts[r])[0] for r in top]
            rerank_scores = dict(zip(top, self._score([feats] * len(top), ids)))
            keep = sorted(keep[:rerank], key=lambda sr: -rerank_scores[sr[1]]) + keep[rerank:]
        return [{"rank": i + 1, "text": texts[r], "score": s, "rerank_score": rerank_scores.get(r),
                 "product_id": owners[r] if owners else None} for i, (s, r) in enumerate(keep[:k])]

    # ------------------------------------------------------------- re-ranking

    def _rerank_products(self, rows: list[int], text: str | None, feats) -> list[float]:
        """Kaleido-BERT log-odds of each candidate row against the query."""
        if self.reranker is None:
            raise ValueError("rerank needs a reranker: SearchEngine.load(..., reranker=FT/retrieval)")
        if not rows:
            return []
        ids = [self.index.metadata.at[r, "id"] for r in rows]
        if text is not None:  # text query: each candidate's image with the query text
            query_ids = self.rerank_processor.encode_text(text)[0]
            return self._score([self._features(pid) for pid in ids], [query_ids] * len(rows))
        if feats is None:
            raise ValueError("re-ranking an image query needs its patch features (a product id of the cache, "
                             "PatchFeatures or (features, positions))")
        titles = [self.rerank_processor.encode_text(self.index.metadata.at[r, "title"])[0] for r in rows]
        return self._score([feats] * len(rows), titles)

    def _features(self, product_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None or product_id not in self.cache:
            raise ValueError(f"product {product_id!r} is not in the re-ranking feature cache")
        item = self.cache[product_id]
        return item.features, item.positions

    @torch.inference_mode()
    def _score(self, feats: list[tuple], text_ids: list[np.ndarray]) -> list[float]:
        """The reranker's scores of the pairs (feats[i], text_ids[i]), in batches."""
        device = next(self.reranker.parameters()).device
        out: list[float] = []
        for s in range(0, len(feats), self.rerank_batch_size):
            batch = self.rerank_processor.pad_text(text_ids[s:s + self.rerank_batch_size])
            chunk = feats[s:s + self.rerank_batch_size]
            batch["patch_features"] = torch.from_numpy(np.stack([f for f, _ in chunk]).astype(np.float32))
            batch["patch_positions"] = torch.from_numpy(np.stack([p for _, p in chunk]).astype(np.float32))
            out += self.reranker.score({k: v.to(device) for k, v in batch.items()}).float().cpu().tolist()
        return out

    def _hit(self, rank: int, row: int, score: float, rerank_score: float | None) -> Hit:
        rec = self.index.product(row)
        return Hit(rank=rank, product_id=str(rec["id"]), score=score, title=rec["title"], category=rec["category"],
                   subcategory=rec["subcategory"], attributes=rec["attributes"], image=rec["image"],
                   rerank_score=rerank_score)


def timed(fn, *args, **kwargs):
    """``(result, milliseconds)`` of one call (for the CLI's and benchmarks' latency lines)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, 1000 * (time.perf_counter() - start)
