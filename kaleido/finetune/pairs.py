"""Model inputs for (image, text) pairs of products: cached patches + tokenised titles.

Fine-tuning and evaluation pair product ``i``'s image with product ``j``'s text; this
builds those batches without any masking or corruption.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from kaleido.data.catalog import Product
from kaleido.model.processor import KaleidoProcessor
from kaleido.patches.cache import FeatureCache, cached_products

log = logging.getLogger(__name__)


class PairInputs:
    """Products with cached features, tokenised once; ``batch(images, texts)`` -> tensors.

    Args:
        products: the products (those missing from the cache are dropped and counted).
        cache: their patch features.
        processor: tokenizer and text length.
    """

    def __init__(self, products: Sequence[Product], cache: FeatureCache, processor: KaleidoProcessor):
        self.products = cached_products(products, cache, processor.grids)
        self.dropped = len(products) - len(self.products)
        self.cache, self.processor = cache, processor
        self.text_ids = [processor.encode_text(p.text)[0] for p in self.products]

    def __len__(self) -> int:
        return len(self.products)

    def patches(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.cache[self.products[index].id]
        return item.features, item.positions

    def batch(self, images: Sequence[int], texts: Sequence[int],
              text_ids: Sequence[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Inputs pairing ``images[k]``'s patches with ``texts[k]``'s text (or ``text_ids[k]``)."""
        ids = text_ids if text_ids is not None else [self.text_ids[j] for j in texts]
        out = self.processor.pad_text(ids)
        feats = {i: self.patches(i) for i in set(int(i) for i in images)}
        out["patch_features"] = torch.from_numpy(np.stack([feats[int(i)][0] for i in images]))
        out["patch_positions"] = torch.from_numpy(np.stack([feats[int(i)][1] for i in images]).astype(np.float32))
        return out
