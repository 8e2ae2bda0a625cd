"""Embedding texts and products with a trained dual encoder (batched, no gradients)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kaleido.dual.modeling import DualEncoder
from kaleido.dual.processor import DualProcessor
from kaleido.training.loop import resolve_device


def load_dual(path: str | Path, device: str | torch.device = "cpu") -> tuple[DualEncoder, DualProcessor]:
    """A ``kaleido dual train`` ``RUN/final`` folder -> (model in eval mode on ``device``, processor)."""
    device = resolve_device(device) if isinstance(device, str) else device
    return DualEncoder.from_pretrained(path).to(device).eval(), DualProcessor.from_pretrained(path)


def _device(model: DualEncoder) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def embed_texts(model: DualEncoder, processor: DualProcessor, texts: Sequence[str], batch_size: int = 256,
                progress: bool = False) -> np.ndarray:
    """Unit text embeddings.

    Args:
        model: the dual encoder (eval mode; its device is used).
        processor: its processor.
        texts: the texts (queries, titles, prompts).
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Returns:
        (N, E) float32.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    device, out = _device(model), []
    for start in tqdm(range(0, len(texts), batch_size), desc="texts", unit="batch", disable=not progress):
        batch = processor.texts(list(texts[start:start + batch_size]))
        out.append(model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.config.embed_dim), np.float32)


@torch.inference_mode()
def embed_patches(model: DualEncoder, processor: DualProcessor, features: Sequence, batch_size: int = 128,
                  progress: bool = False) -> np.ndarray:
    """Unit image embeddings of patch features (``PatchFeatures`` or ``(features, positions)`` pairs).

    Returns:
        (N, E) float32.
    """
    device, out = _device(model), []
    for start in tqdm(range(0, len(features), batch_size), desc="images", unit="batch", disable=not progress):
        batch = processor.patches(features[start:start + batch_size])
        whole = batch["whole_image"].to(device) if "whole_image" in batch else None
        out.append(model.encode_image(batch["patch_features"].to(device), batch["patch_positions"].to(device),
                                      batch["patch_mask"].to(device), whole).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.config.embed_dim), np.float32)


def embed_products(model: DualEncoder, processor: DualProcessor, cache, ids: Sequence[str], batch_size: int = 128,
                   progress: bool = False) -> np.ndarray:
    """Unit image embeddings of cached products.

    Args:
        model, processor: the dual encoder.
        cache: a :class:`~kaleido.patches.cache.FeatureCache` holding every id.
        ids: product ids.
        batch_size: products per forward pass (read from the cache one batch at a time).
        progress: show a progress bar.

    Returns:
        (N, E) float32, row ``i`` for ``ids[i]``.
    """
    out = []
    for start in tqdm(range(0, len(ids), batch_size), desc="products", unit="batch", disable=not progress):
        out.append(embed_patches(model, processor, [cache[i] for i in ids[start:start + batch_size]], batch_size))
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)
