"""KB-101, full-catalog retrieval and zero-shot classification of a trained dual encoder.

The dual encoder's scores are one (N images x N texts) matrix of cosine similarities, so the
protocol is the linear reference's (:func:`kaleido.baselines.linear_probe.retrieval_from_scores`):
the same seeded KB-101 draws (same-title products never negatives) and full-catalog ranks (any
same-title product a hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kaleido.evaluation.kb101 import KB101Config
from kaleido.evaluation.metrics import classification_metrics


@dataclass
class DualEvalConfig:
    """What ``kaleido dual eval`` measures."""

    kb101: KB101Config = field(default_factory=KB101Config)
    full_catalog: bool = True    # rank every product of the split against all the others
    zero_shot: list[str] = field(default_factory=lambda: ["category", "subcategory"])  # targets ([] = none)
    prompts: list[str] = field(default_factory=lambda: ["a photo of {label}"])  # zero-shot prompt templates
    batch_size: int = 128        # products / texts per forward pass
    device: str = "auto"         # auto | cpu | cuda


class DualScores:
    """A trained dual encoder as a pair scorer over ``products``: ``score(images, texts)`` is its
    cosine similarity for product-index arrays (the first stage of two-stage retrieval).

    Args:
        model_path: a ``kaleido dual train`` ``RUN/final`` folder.
        products: the scored products, in the caller's order; each must be in ``cache``.
        cache: their :class:`~kaleido.patches.cache.FeatureCache`.
        batch_size: products / texts per forward pass.
        device: where the encoder runs.
    """

    def __init__(self, model_path: str | Path, products: Sequence, cache, batch_size: int = 128,
                 device: str = "auto"):
        from kaleido.dual.encode import embed_products, embed_texts, load_dual

        missing = [p.id for p in products if p.id not in cache]
        if missing:
            raise ValueError(f"{len(missing)} of {len(products)} products have no cached features "
                             f"(e.g. {missing[:3]}); the dual encoder needs them")
        model, processor = load_dual(model_path, device)
        self.image = embed_products(model, processor, cache, [p.id for p in products], batch_size, progress=True)
        self.text = embed_texts(model, processor, [p.title for p in products], batch_size * 2, progress=True)
        self.scale = float(model.scale().detach())  # inverse temperature: logit = scale x cosine

    def score(self, images, texts) -> np.ndarray:
        """Cosine similarities of product-index arrays (any shape)."""
        from kaleido.first_stage import pair_dot

        return pair_dot(self.image, self.text, images, texts)


def evaluate_dual(model_path: str | Path, products: Sequence, cache, cfg: DualEvalConfig = DualEvalConfig()) -> dict:
    """Evaluate a saved dual encoder on ``products``.

    Args:
        model_path: a ``kaleido dual train`` ``RUN/final`` folder.
        products: the evaluated products (e.g. the test split); those missing from the cache
            are left out and counted.
        cache: their :class:`~kaleido.patches.cache.FeatureCache`.
        cfg: the protocol.

    Returns:
        ``{"retrieval": Table-2 dict (KB-101 ITR/TIR, SumR, "full_catalog"), "zero_shot":
        {target: {"accuracy", "macro_f1", ...}}, "products": N, "missing": M}``.
    """
    from kaleido.baselines.linear_probe import ProbeEvalConfig, retrieval_from_scores
    from kaleido.dual.encode import embed_products, embed_texts, load_dual
    from kaleido.dual.zeroshot import product_label, zero_shot_probabilities

    model, processor = load_dual(model_path, cfg.device)
    kept = [p for p in products if p.id in cache and (not processor.whole_image or cache.has_whole_image(p.id))]
    if len(kept) < 2:
        raise ValueError(f"{len(kept)} of {len(products)} products have cached features"
                         f"{' and a whole-image feature' if processor.whole_image else ''}; need at least 2")
    image = embed_products(model, processor, cache, [p.id for p in kept], cfg.batch_size, progress=True)
    text = embed_texts(model, processor, [p.title for p in kept], cfg.batch_size * 2, progress=True)
    scores = image @ text.T                                                         # (N, N)
    out = {"products": len(kept), "missing": len(products) - len(kept),
           "retrieval": retrieval_from_scores(scores, [p.subcategory or "" for p in kept],
                                              [p.category or "" for p in kept], [p.title for p in kept],
                                              ProbeEvalConfig(kb101=cfg.kb101, full_catalog=cfg.full_catalog))}
    out["zero_shot"] = {}
    for target in cfg.zero_shot:
        truth = [product_label(p, target) for p in kept]
        names = sorted(set(truth) - {""})
        if len(names) < 2:
            continue
        probs = zero_shot_probabilities(model, processor, image, names, cfg.prompts)
        known = np.array([bool(t) for t in truth])
        predicted = np.array(names, dtype=object)[probs.argmax(1)]
        out["zero_shot"][target] = {**classification_metrics([t for t, k in zip(truth, known) if k],
                                                             list(predicted[known])),
                                    "labels": len(names)}
    return out
