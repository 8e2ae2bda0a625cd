"""Zero-shot category and attribute prediction from the text tower (CLIP / FashionCLIP style):
each label becomes a prompt ("a photo of {label}"), and a product's probabilities are the
softmax of its image embedding's similarities to the label embeddings, times the learnt
inverse temperature.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from kaleido.dual.encode import embed_products, embed_texts
from kaleido.dual.modeling import DualEncoder
from kaleido.dual.processor import DualProcessor

DEFAULT_PROMPTS = ("a photo of {label}",)
_PRODUCT_FIELDS = ("category", "subcategory")


def product_label(product, target: str) -> str:
    """A product's value of ``target``: ``category``, ``subcategory`` or an attribute key ("" if none)."""
    value = getattr(product, target) if target in _PRODUCT_FIELDS else product.attributes.get(target)
    return "" if value is None or str(value).lower() in ("nan", "none") else str(value).strip()


def label_embeddings(model: DualEncoder, processor: DualProcessor, labels: Sequence[str],
                     prompts: Sequence[str] = DEFAULT_PROMPTS) -> np.ndarray:
    """(L, E) unit label embeddings: the mean of each label's prompt embeddings, renormalised.

    Args:
        model, processor: the dual encoder.
        labels: the label names.
        prompts: templates with ``{label}``; several are averaged (prompt ensembling).
    """
    if not labels:
        raise ValueError("zero-shot prediction needs at least one label")
    if not prompts or any("{label}" not in p for p in prompts):
        raise ValueError(f"every prompt must contain {{label}}, got {list(prompts)}")
    texts = [p.format(label=label) for label in labels for p in prompts]
    emb = embed_texts(model, processor, texts).reshape(len(labels), len(prompts), -1).mean(1)   # (L, E)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)


def zero_shot_probabilities(model: DualEncoder, processor: DualProcessor, image_embeddings: np.ndarray,
                            labels: Sequence[str], prompts: Sequence[str] = DEFAULT_PROMPTS,
                            temperature: float | None = None) -> np.ndarray:
    """Per-product probabilities over ``labels``.

    Args:
        model, processor: the dual encoder.
        image_embeddings: (N, E) unit image embeddings (e.g. :func:`~kaleido.dual.encode.embed_products`).
        labels: the label names (L).
        prompts: prompt templates with ``{label}``.
        temperature: softmax temperature (default: the model's learnt one).

    Returns:
        (N, L) float32 rows summing to 1.
    """
    labels_emb = label_embeddings(model, processor, labels, prompts)
    scale = float(model.scale().detach()) if temperature is None else 1.0 / temperature
    logits = torch.from_numpy(np.asarray(image_embeddings, dtype=np.float32) @ labels_emb.T) * scale
    return torch.softmax(logits.double(), dim=1).float().numpy()


def zero_shot_predict(model: DualEncoder, processor: DualProcessor, cache, products: Sequence,
                      targets: Sequence[str] = ("category", "subcategory"), labels: dict | None = None,
                      prompts: Sequence[str] = DEFAULT_PROMPTS, batch_size: int = 128) -> dict:
    """Zero-shot labels of cached products for each target, with accuracy where the catalog knows them.

    Args:
        model, processor: the dual encoder.
        cache: the products' patch features.
        products: the products.
        targets: ``category``, ``subcategory`` or attribute keys (e.g. ``baseColour``).
        labels: optional ``{target: [label names]}``; default: the targets' distinct values
            among ``products``.
        prompts: prompt templates.
        batch_size: products per forward pass.

    Returns:
        ``{target: {"labels": [...], "probabilities": (N, L), "predicted": [...], "accuracy":
        share of the products with a known label that got it, "known": how many had one}}``.
    """
    image = embed_products(model, processor, cache, [p.id for p in products], batch_size)
    out = {}
    for target in targets:
        names = list((labels or {}).get(target) or sorted({product_label(p, target) for p in products} - {""}))
        if not names:
            raise ValueError(f"no product has a {target!r} label; give the label names")
        probs = zero_shot_probabilities(model, processor, image, names, prompts)
        predicted = [names[k] for k in probs.argmax(1)]
        truth = [product_label(p, target) for p in products]
        known = [i for i, t in enumerate(truth) if t]
        acc = float(np.mean([predicted[i] == truth[i] for i in known])) if known else float("nan")
        out[target] = {"labels": names, "probabilities": probs, "predicted": predicted, "accuracy": acc,
                       "known": len(known)}
    return out
