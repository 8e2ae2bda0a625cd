"""Pre-training samples: cached patches + product text, masked and corrupted in the data step.

Every random choice of a sample (ITM negative, masks, rotation, jigsaw, camouflage
donor) comes from a generator seeded by ``(seed, epoch, index)``, so a sample is a pure
function of those three numbers: runs are reproducible and resume exactly.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kaleido.alignment.generator import AlignedPair
from kaleido.contrastive import title_codes
from kaleido.data.catalog import Product
from kaleido.model.processor import KaleidoProcessor, pad_ids
from kaleido.patches.cache import FeatureCache
from kaleido.patches.geometry import level_slices
from kaleido.pretrain.config import TaskConfig
from kaleido.pretrain.corruptions import (NegativeSampler, blank_level5, camouflage_level3,
                                          grey_level4, jigsaw_level2, rotate_level1)
from kaleido.pretrain.masking import MaskingConfig, mask_tokens, plan_masks, word_groups

log = logging.getLogger(__name__)


class PretrainDataset(Dataset):
    """Products with cached patch features, yielding one masked + corrupted sample each.

    Args:
        products: the products to train on (those missing from the cache are dropped and counted).
        cache: their patch features (levels 1..5).
        alignments: ``{product id: [AlignedPair, ...]}`` from ``kaleido align build``
            (products without an entry fall back to random masking).
        processor: tokenizer and text length.
        masking: AGM / random masking settings.
        tasks: which heads are on (their corruptions are applied only then).
        seed: base seed of the per-sample generators.
        augment: applied to each sample's patches first (ViLT's :class:`PixelRandAugment`);
            None (validation, CNN caches) leaves them as cached.
    """

    def __init__(self, products: Sequence[Product], cache: FeatureCache,
                 alignments: dict[str, list[AlignedPair]] | None, processor: KaleidoProcessor,
                 masking: MaskingConfig, tasks: TaskConfig, seed: int = 0, augment=None):
        self.products = [p for p in products if p.id in cache]
        self.dropped = len(products) - len(self.products)
        if self.dropped:
            log.warning("%d of %d products have no cached patch features (skipped images) and are left out",
                        self.dropped, len(products))
        if len(self.products) < 2:
            raise ValueError(f"pre-training needs at least 2 products with cached features, got "
                             f"{len(self.products)} (cache {cache.root})")
        if list(cache.meta["grids"]) != list(processor.grids):
            raise ValueError(f"cache {cache.root} has grids {cache.meta['grids']}; the processor expects "
                             f"{processor.grids}")
        self.cache, self.processor, self.masking, self.tasks = cache, processor, masking, tasks
        self.augment = augment
        self.weights = tasks.weights()
        self.seed, self.epoch = seed, 0
        self.levels = level_slices(processor.grids)
        self.finest = max(processor.grids)  # the blank-to-colour level
        tok = processor.tokenizer
        self.mask_id, self.vocab_size = tok.mask_token_id, len(tok)
        self.special_ids = set(tok.all_special_ids)
        self.text_ids, self.words = [], []
        for p in self.products:
            ids, word_ids = processor.encode_text(p.text)
            self.text_ids.append(ids)
            self.words.append(word_groups(word_ids))
        alignments = alignments or {}
        self.pairs = [[(tuple(t for t in a.tokens), a.patch) for a in alignments.get(p.id, [])
                       if max(a.tokens) < len(ids) - 1]
                      for p, ids in zip(self.products, self.text_ids)]
        self.aligned_share = float(np.mean([bool(x) for x in self.pairs]))
        self.title_groups = title_codes([p.title for p in self.products])
        # ITM on clean pairs mined in the batch: every sample here is then the product's own pair
        self.clean_pairs = bool(tasks.itm_clean or "itc" in self.weights)
        self.negatives = NegativeSampler(np.array([p.subcategory or "" for p in self.products]),
                                         np.array([p.category or "" for p in self.products]))
        for task, what in (("g2cm", "grey"), ("rr", "rotated")):
            if task in self.weights and cache.meta.get("extras") is False:
                raise ValueError(f"cache {cache.root} has no {what} patches (built without extras); "
                                 f"rebuild it or set tasks.{task}=0")

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop: new masks and corruptions each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.products)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        w = self.weights
        negative = not self.clean_pairs and "itm" in w and rng.random() < self.tasks.itm_negative_ratio
        text_index = index
        if negative:  # hard (same subcategory first) or any other product
            if rng.random() < self.tasks.itm_hard_ratio:
                text_index = self.negatives.sample(index, rng)
            else:
                text_index = int(rng.integers(len(self.products) - 1))
                text_index += text_index >= index
        ids = self.text_ids[text_index]
        # Alignments tie this product's text to its own patches; a borrowed text has none.
        pairs = [] if negative else self.pairs[index]
        plan = plan_masks(self.words[text_index], pairs, self.levels, rng, self.masking)

        sample: dict[str, np.ndarray] = {"text_index": np.int64(text_index)}
        if self.clean_pairs:
            sample["clean_input_ids"] = ids
            sample["title_group"] = np.int64(self.title_groups[index])
        else:
            sample["itm_labels"] = np.int64(0 if negative else 1)
        if "amlm" in w:
            # Negatives are masked too (else [MASK] would give ITM away), but not scored.
            masked, labels = mask_tokens(ids, plan.tokens, rng, self.mask_id, self.vocab_size,
                                         self.special_ids, self.masking)
            sample["input_ids"], sample["mlm_labels"] = masked, labels if not negative else np.full_like(labels, -100)
        else:
            sample["input_ids"] = ids
        item = self.cache[self.products[index].id]
        original = item.features                                      # (P, D) float32
        if self.augment is not None:  # the image as this epoch sees it: every task reads the same one
            original = self.augment(original, rng)
        features = original
        if "rr" in w:
            features, sample["rr_labels"] = rotate_level1(features, item.rotated, self.levels, rng)
        if "jps" in w:
            features, sample["jps_labels"] = jigsaw_level2(features, self.levels, rng)
        if "cp" in w:
            donor = int(rng.integers(len(self.products) - 1))
            donor += donor >= index                                    # any product but this one
            other = self.cache[self.products[donor].id].features
            features, sample["cp_labels"] = camouflage_level3(features, other, int(plan.patches[3][0]),
                                                              self.levels)
        if "g2cm" in w:
            features = grey_level4(features, item.grey, plan.patches[4], self.levels)
            sample["g2cm_index"], sample["g2cm_target"] = plan.patches[4], original[plan.patches[4]]
        if "b2cm" in w:
            blank = plan.patches[self.finest]
            features = blank_level5(features, blank)
            sample["b2cm_index"], sample["b2cm_target"] = blank, original[blank]
        sample["patch_features"] = features.astype(np.float32)
        if self.clean_pairs:
            sample["clean_patch_features"] = original.astype(np.float32)
        sample["patch_positions"] = item.positions.astype(np.float32)
        return sample


def collate_pretrain(samples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack samples into a batch; texts are right-padded (labels with -100)."""
    t = max(len(s["input_ids"]) for s in samples)
    batch: dict[str, torch.Tensor] = {}
    batch["input_ids"], batch["attention_mask"] = pad_ids([s["input_ids"] for s in samples], pad_id)
    if "clean_input_ids" in samples[0]:
        batch["clean_input_ids"], batch["clean_attention_mask"] = pad_ids([s["clean_input_ids"] for s in samples],
                                                                       pad_id)
    if "mlm_labels" in samples[0]:
        labels = np.full((len(samples), t), -100, dtype=np.int64)
        for i, s in enumerate(samples):
            labels[i, :len(s["mlm_labels"])] = s["mlm_labels"]
        batch["mlm_labels"] = torch.from_numpy(labels)
    for key in samples[0]:
        if key not in batch and key != "input_ids":
            batch[key] = torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples]))
    return batch
