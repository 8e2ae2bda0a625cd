"""Training items of the dual encoder: two augmented image views and two text views per product.

Texts are tokenised once, up front; the image views are drawn per (seed, epoch, index), so a
resumed run sees the same views as an uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kaleido.contrastive import title_codes
from kaleido.dual.augment import image_view
from kaleido.dual.config import AugmentConfig, DualLossConfig
from kaleido.dual.processor import DualProcessor
from kaleido.patches.cache import FeatureCache, cached_products

log = logging.getLogger(__name__)


class DualDataset(Dataset):
    """Item ``i``: product ``i``'s image views (features + visible-patch mask), positions,
    title and tag-text token ids, and its title / tag-text group codes.

    Args:
        products: the products (those missing from the cache are dropped and counted).
        cache: their patch features.
        processor: tokenizer, text length, tag template, grids.
        augment: the image-view augmentations (``enabled=False`` for validation).
        image_views: 1 or 2 views per item.
        seed: seeds the views (with the epoch and the index).
    """

    def __init__(self, products: Sequence, cache: FeatureCache, processor: DualProcessor,
                 augment: AugmentConfig = AugmentConfig(), image_views: int = 2, seed: int = 0):
        self.products = cached_products(products, cache, processor.grids)
        if processor.whole_image:
            kept = [p for p in self.products if cache.has_whole_image(p.id)]
            if len(kept) < len(self.products):
                log.warning("%d of %d products have no whole-image feature and are left out",
                            len(self.products) - len(kept), len(self.products))
            if not kept:
                raise ValueError(f"none of the products has a whole-image feature in {cache.root} "
                                 "(make the cache with `kaleido patches union --whole-image`)")
            self.products = kept
        self.dropped = len(products) - len(self.products)
        self.cache, self.processor, self.augment = cache, processor, augment
        self.image_views, self.seed, self.epoch = image_views, seed, 0
        titles = [p.title for p in self.products]
        # a product without tags falls back to its title (a second view equal to the first)
        tags = [processor.attribute_text(p) or p.title for p in self.products]
        self.title_ids, self.attribute_ids = processor.encode(titles), processor.encode(tags)
        self.title_group, self.attribute_group = title_codes(titles), title_codes(tags)
        self.title_states = self.attribute_states = None

    def cache_text_states(self, task) -> None:
        """Compute the frozen text body's pooled states of both text views once
        (:meth:`DualTask.text_states`); items then carry them instead of running the body."""
        self.title_states = task.text_states(self.title_ids).numpy()
        self.attribute_states = task.text_states(self.attribute_ids).numpy()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.products)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        item = self.cache[self.products[i].id]
        out = {"patch_positions": item.positions.astype(np.float32), "title_ids": self.title_ids[i],
               "attributes_ids": self.attribute_ids[i], "title_group": int(self.title_group[i]),
               "attributes_group": int(self.attribute_group[i])}
        if self.processor.whole_image:
            out["whole_image"] = item.whole_image.astype(np.float32)
        if self.title_states is not None:
            out["title_states"], out["attributes_states"] = self.title_states[i], self.attribute_states[i]
        for v in "ab"[:self.image_views]:
            out[f"patch_features_{v}"], out[f"patch_mask_{v}"] = image_view(
                item.features, self.processor.grids, self.augment, rng)
        return out


class DualCollator:
    """Stacks items into one batch: ``patch_features_a`` (B, P, D), ``patch_mask_a`` (B, P) (and
    ``_b``), ``patch_positions`` (B, P, 5), ``<view>_input_ids`` / ``<view>_attention_mask``
    (B, T) (or, for a frozen text body, its cached ``<view>_states`` (B, H)) and
    ``<view>_groups`` (B, K) for each text view.

    Args:
        processor: pads the token ids.
        loss: which text views are used, and whether same tag texts are excluded.
    """

    def __init__(self, processor: DualProcessor, loss: DualLossConfig = DualLossConfig()):
        self.processor, self.loss = processor, loss

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"patch_positions": torch.from_numpy(np.stack([it["patch_positions"] for it in items]))}
        if "whole_image" in items[0]:
            batch["whole_image"] = torch.from_numpy(np.stack([it["whole_image"] for it in items]))
        for v in "ab":
            if f"patch_features_{v}" in items[0]:
                batch[f"patch_features_{v}"] = torch.from_numpy(np.stack([it[f"patch_features_{v}"] for it in items]))
                batch[f"patch_mask_{v}"] = torch.from_numpy(np.stack([it[f"patch_mask_{v}"] for it in items]))
        title = torch.tensor([it["title_group"] for it in items])
        for view in self.loss.text_views:
            if f"{view}_states" in items[0]:
                batch[f"{view}_states"] = torch.from_numpy(np.stack([it[f"{view}_states"] for it in items]))
            else:
                ids = self.processor.pad([it[f"{view}_ids"] for it in items])
                batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"] = ids["input_ids"], ids["attention_mask"]
            groups = [title]
            if view == "attributes" and self.loss.mask_same_attributes:
                groups.append(torch.tensor([it["attributes_group"] for it in items]))
            batch[f"{view}_groups"] = torch.stack(groups, 1)
        return batch
