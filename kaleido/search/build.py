"""``build_index`` / ``add_products``: embed a catalog with the dual encoder into a product index.

Building is resumable: products are embedded in chunks of ``chunk_size`` written whole to
``INDEX/chunks/chunk-XXXXX.npz`` (temporary name, then rename), so a killed build run again
embeds only the chunks it lacks. The chunks are removed once the index is written. A build
whose products and model match a finished index reuses its embeddings and only rebuilds the
FAISS part (e.g. to try another ``kind`` or HNSW setting).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from kaleido.search.config import IndexConfig
from kaleido.search.index import INFO_NAME, ProductIndex, index_info, make_faiss_index, product_metadata

log = logging.getLogger(__name__)

CHUNKS = "chunks"
MANIFEST = "manifest.json"


def model_fingerprint(model) -> str:
    """sha1 of every parameter and buffer of the dual encoder (which model made an embedding)."""

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _ids_fingerprint(ids: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _open_model(model, device: str):
    """(model, processor, path or None) from a ``RUN/final`` path or a ``(model, processor)`` pair."""
    from kaleido.dual.encode import load_dual

    if isinstance(model, (str, Path)):
        encoder, processor = load_dual(model, device)
        return encoder, processor, str(Path(model).resolve())
    encoder, processor = model
    return encoder.eval(), processor, None


def _open_cache(cache):
    from kaleido.patches.cache import FeatureCache

    if isinstance(cache, (str, Path)):
        return FeatureCache(cache), str(Path(cache).resolve())
    return cache, str(cache.root)


def _embed(encoder, processor, cache, products: Sequence, cfg: IndexConfig) -> dict[str, np.ndarray]:
    from kaleido.dual.encode import embed_products, embed_texts

    out = {"image": embed_products(encoder, processor, cache, [p.id for p in products], cfg.batch_size)}
    if cfg.titles:
        out["text"] = embed_texts(encoder, processor, [p.title for p in products], cfg.batch_size)
    return out


def _cached_products(products: Sequence, cache, whole_image: bool = False) -> list:
    kept = [p for p in products if p.id in cache and (not whole_image or cache.has_whole_image(p.id))]
    if len(kept) < len(products):
        what = "cached patch features" + (" and a whole-image feature" if whole_image else "")
        log.warning("%d of %d products lack %s and are not indexed", len(products) - len(kept), len(products), what)
    return kept


def build_index(model, products: Sequence, cache, out: str | Path, cfg: IndexConfig = IndexConfig(),
                image_store=None, progress: bool = True) -> ProductIndex:
    """Embed every product and write a :class:`ProductIndex` folder.

    Args:
        model: a dual encoder folder (``RUN/final``) or a ``(DualEncoder, DualProcessor)`` pair.
        products: the products to index (those missing from the cache are skipped and counted).
        cache: their :class:`~kaleido.patches.cache.FeatureCache` (or its folder).
        out: the index folder (resumed / reused, see the module docstring).
        cfg: index kind and parameters, chunk and batch sizes.
        image_store: the catalog's store, to record resolvable image paths.
        progress: show a progress bar.

    Returns:
        The index, also saved in ``out``.
    """
    from kaleido.training.loop import resolve_device

    out, start = Path(out), time.perf_counter()
    cache, cache_path = _open_cache(cache)
    encoder, processor, model_path = _open_model(model, resolve_device(cfg.device).type)
    products = _cached_products(products, cache, processor.whole_image)
    if not products:
        raise ValueError(f"none of the products is in the feature cache {cache_path}")
    ids = [p.id for p in products]
    fp = {"model": model_fingerprint(encoder), "ids": _ids_fingerprint(ids), "titles": cfg.titles}
    kind = cfg.resolve_kind(len(products))
    info = index_info(kind, cfg, model=model_path, cache=cache_path, model_fingerprint=fp["model"],
                      ids_fingerprint=fp["ids"])
    old = _finished(out, fp)
    if old is not None:
        log.info("%s: embeddings of these products by this model exist; rebuilding the %s index only", out, kind)
        emb, text = old.embeddings, old.text_embeddings
    else:
        emb, text = _embed_chunks(encoder, processor, cache, products, out / CHUNKS, cfg, fp, progress)
    info["build_s"] = round(time.perf_counter() - start, 3)
    t0 = time.perf_counter()
    index = ProductIndex(make_faiss_index(emb, kind, cfg), emb, product_metadata(products, image_store), info, text)
    info["faiss_build_s"] = round(time.perf_counter() - t0, 3)
    index.save(out)
    shutil.rmtree(out / CHUNKS, ignore_errors=True)
    log.info("%s: %s index of %d products (%d-d)", out, kind, len(index), emb.shape[1])
    return index


def _finished(out: Path, fp: dict) -> ProductIndex | None:
    if not (out / INFO_NAME).is_file():
        return None
    info = json.loads((out / INFO_NAME).read_text())
    same = (info.get("model_fingerprint") == fp["model"] and info.get("ids_fingerprint") == fp["ids"]
            and info.get("config", {}).get("titles") == fp["titles"])
    return ProductIndex.load(out) if same else None


def _embed_chunks(encoder, processor, cache, products, folder: Path, cfg: IndexConfig, fp: dict,
                  progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    manifest = {**fp, "chunk_size": cfg.chunk_size, "products": len(products)}
    if (folder / MANIFEST).is_file() and json.loads((folder / MANIFEST).read_text()) != manifest:
        log.warning("%s holds chunks of another build (model, products or chunk size); starting over", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    starts = range(0, len(products), cfg.chunk_size)
    parts: list[dict[str, np.ndarray]] = []
    bar = tqdm(total=len(products), desc="index", unit="product", disable=not progress, dynamic_ncols=True)
    for k, s in enumerate(starts):
        chunk, path = products[s:s + cfg.chunk_size], folder / f"chunk-{k:05d}.npz"
        if path.is_file():
            stored = dict(np.load(path, allow_pickle=False))
            if stored["ids"].tolist() != [p.id for p in chunk]:
                raise ValueError(f"{path} holds other products; remove {folder} and build again")
        else:
            stored = {"ids": np.array([p.id for p in chunk]), **_embed(encoder, processor, cache, chunk, cfg)}
            tmp = folder / f"chunk-{k:05d}.tmp.npz"
            np.savez(tmp, **stored)
            tmp.rename(path)
        parts.append(stored)
        bar.update(len(chunk))
    bar.close()
    emb = np.concatenate([p["image"] for p in parts]).astype(np.float32)
    text = np.concatenate([p["text"] for p in parts]).astype(np.float32) if cfg.titles else None
    return emb, text


def add_products(index_dir: str | Path, products: Sequence, cache=None, model=None, image_store=None,
                 cfg: IndexConfig | None = None, progress: bool = True) -> tuple[ProductIndex, int]:
    """Embed products not yet indexed and append them to an existing index (no rebuild).

    Args:
        index_dir: a ``kaleido index build`` folder (rewritten in place).
        products: the products; those already indexed, or missing from the cache, are skipped.
        cache: their feature cache (default: the one the index was built from).
        model: the dual encoder (default: the one the index was built from; another model
            is refused, since its embeddings would not be comparable).
        image_store: the catalog's store, for image paths.
        cfg: batch size and device (default: the index's own config).
        progress: show a progress bar.

    Returns:
        ``(the updated index, number of products added)``.
    """
    from kaleido.training.loop import resolve_device

    index = ProductIndex.load(index_dir)
    cfg = dataclasses.replace(cfg or IndexConfig(**index.info["config"]), titles=index.text_embeddings is not None)
    cache, _ = _open_cache(cache if cache is not None else index.info.get("cache"))
    model = model or index.info.get("model")
    if model is None:
        raise ValueError(f"{index_dir} does not record its model; pass the dual encoder")
    encoder, processor, _ = _open_model(model, resolve_device(cfg.device).type)
    if model_fingerprint(encoder) != index.info.get("model_fingerprint"):
        raise ValueError(f"{index_dir} was built by another dual encoder; embeddings of two models "
                         "cannot share an index (build a new one)")
    present = [p for p in products if index.row_of(p.id) is not None]
    if present:
        log.info("%d of the products are already indexed and skipped", len(present))
    new = _cached_products([p for p in products if index.row_of(p.id) is None], cache, processor.whole_image)
    if new:
        parts = [_embed(encoder, processor, cache, new[s:s + cfg.chunk_size], cfg)
                 for s in tqdm(range(0, len(new), cfg.chunk_size), desc="add", unit="chunk", disable=not progress)]
        text = np.concatenate([p["text"] for p in parts]) if cfg.titles else None
        index.add(np.concatenate([p["image"] for p in parts]), product_metadata(new, image_store), text)
        index.info["ids_fingerprint"] = _ids_fingerprint(index.metadata["id"].astype(str).tolist())
        index.save(index_dir)
        if index.kind == "flat" and len(index) >= cfg.exact_threshold:
            log.warning("%s: %d products in an exact index; `kaleido index build` again for an approximate one",
                        index_dir, len(index))
    return index, len(new)
