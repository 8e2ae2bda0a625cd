"""The linear reference: a frozen-feature linear dual encoder and logistic-regression
classifiers, the row every results table carries (DESIGN.md, "Evaluation protocol").

Image: the pooled EfficientNet-Lite0 ImageNet feature of the whole image at 224 px (no
saliency, no patches); text: the mean-pooled MiniLM title embedding; both frozen and
standardised with the training split's statistics. Two linear maps to a shared space, a
learnable temperature and symmetric InfoNCE (same-title pairs are not negatives) train in
seconds. The same frozen features feed logistic regressions for category and subcategory,
on the image alone and on image + title.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kaleido.baselines.features import GlobalFeatureConfig
from kaleido.contrastive import info_nce, title_codes
from kaleido.evaluation.kb101 import KB101Config, describe, sample_kb101
from kaleido.evaluation.metrics import (classification_metrics, full_catalog_ranks, ranks_from_scores,
                                        retrieval_summary)

log = logging.getLogger(__name__)


@dataclass
class LinearProbeConfig:
    """Training of the linear dual encoder and the classifiers."""

    dim: int = 256               # shared embedding size
    dropout: float = 0.2         # dropout on the (standardised) input features
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1.0e-3           # AdamW
    weight_decay: float = 1.0e-2
    init_temperature: float = 0.07
    seed: int = 0
    logreg_c: float = 1.0        # inverse L2 strength of the logistic regressions
    logreg_max_iter: int = 2000
    threads: int = 0             # torch threads while training (0 = leave as is)


@dataclass
class ProbeEvalConfig:
    """How the reference is scored (the same protocol as ``kaleido eval``)."""

    kb101: KB101Config = field(default_factory=KB101Config)
    full_catalog: bool = True    # rank every test product against all the others


@dataclass
class LinearProbeRunConfig:
    """Root config of ``kaleido baseline linear-probe``."""

    features: GlobalFeatureConfig = field(default_factory=GlobalFeatureConfig)
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    eval: ProbeEvalConfig = field(default_factory=ProbeEvalConfig)


class Standardizer:
    """Per-dimension standardisation fitted on the training split."""

    def __init__(self, x: np.ndarray):
        self.mean = x.mean(0, keepdims=True)
        self.std = x.std(0, keepdims=True) + 1e-6

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


class LinearDualEncoder(nn.Module):
    """Two linear maps (image, text) into one L2-normalised space and a learnable temperature."""

    def __init__(self, image_dim: int, text_dim: int, cfg: LinearProbeConfig):
        super().__init__()
        self.image = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(image_dim, cfg.dim))
        self.text = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(text_dim, cfg.dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)

    def embed_text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(x), dim=-1)


def train_dual_encoder(image: np.ndarray, text: np.ndarray, titles, cfg: LinearProbeConfig) -> tuple[LinearDualEncoder, dict]:
    """Train the linear dual encoder on standardised features.

    Args:
        image: (N, Di) standardised image features of the training products.
        text: (N, Dt) standardised title embeddings, row-aligned with ``image``.
        titles: (N,) titles; same-title products in a batch are not each other's negatives.
        cfg: the recipe.

    Returns:
        The model (eval mode) and ``{"seconds", "final_loss", "steps"}``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = LinearDualEncoder(image.shape[1], text.shape[1], cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xi, xt = torch.from_numpy(image), torch.from_numpy(text)
    groups = torch.from_numpy(title_codes(titles))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, steps, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xi), generator=gen)
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b:b + cfg.batch_size]
            if len(idx) < 2:
                continue
            loss = info_nce(model.embed_image(xi[idx]), model.embed_text(xt[idx]), model.logit_scale, groups[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    model.eval()
    return model, {"seconds": time.perf_counter() - start, "final_loss": float(loss.detach()), "steps": steps,
                   "temperature": float(1.0 / model.logit_scale.exp())}


def similarity(model: LinearDualEncoder, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(N_images, N_texts) cosine similarities."""
    with torch.no_grad():
        return (model.embed_image(torch.from_numpy(image)) @ model.embed_text(torch.from_numpy(text)).t()).numpy()


def retrieval_from_scores(scores: np.ndarray, subcategories, categories, titles,
                          cfg: ProbeEvalConfig) -> dict:
    """KB-101 (same-title products never negatives) and full-catalog ranks (any same-title
    product is a hit) from an (N images, N texts) score matrix.

    Shared by every system whose scores fit in memory as one matrix (dual encoders).
    """
    draws = sample_kb101(subcategories, categories, cfg.kb101, titles=titles)
    itr, tir = [], []
    for d in draws:
        q = np.repeat(d.queries[:, None], d.candidates.shape[1], 1)
        itr.append(ranks_from_scores(scores[q, d.candidates]))
        tir.append(ranks_from_scores(scores[d.candidates, q]))
    out = retrieval_summary(itr, tir)
    out["sampling"] = describe(draws)
    out["same_title_excluded"] = int(sum(d.same_title_excluded for d in draws))
    if cfg.full_catalog:
        ranks = full_catalog_ranks(scores, groups=title_codes(titles))  # any same-title product is a hit
        twins = ranks.pop("in_shared_group")
        out["full_catalog"] = {"products": len(scores), **ranks, "same_title_products": twins}
    return out


def logistic_regression(train_x: np.ndarray, train_y, test_x: np.ndarray, test_y,
                        cfg: LinearProbeConfig) -> dict:
    """Accuracy and macro-F1 of a multinomial logistic regression; test labels the training
    split never saw count as errors (``unseen``)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=cfg.logreg_c, max_iter=cfg.logreg_max_iter)
    clf.fit(train_x, np.asarray(train_y))
    pred = clf.predict(test_x)
    known = set(clf.classes_)
    return {**classification_metrics(list(test_y), list(pred)), "unseen": sum(y not in known for y in test_y)}


def run_linear_probe(train: dict, test: dict, cfg: LinearProbeConfig = LinearProbeConfig(),
                     eval_cfg: ProbeEvalConfig = ProbeEvalConfig()) -> dict:
    """Train and evaluate the whole reference.

    Args:
        train, test: ``{"image": (N, Di), "text": (N, Dt), "titles", "category", "subcategory"}``
            (raw frozen features; standardised here with the training statistics).
        cfg, eval_cfg: the recipe and the protocol.

    Returns:
        ``{"retrieval": Table-2 dict, "category": {"image": ..., "image+title": ...},
        "subcategory": {...}, "train": {...}, "products": {"train": n, "test": n}}``.
    """
    si, st = Standardizer(train["image"]), Standardizer(train["text"])
    tr_i, tr_t, te_i, te_t = si(train["image"]), st(train["text"]), si(test["image"]), st(test["text"])
    model, info = train_dual_encoder(tr_i, tr_t, train["titles"], cfg)
    log.info("linear dual encoder: %d steps in %.1f s, final loss %.3f", info["steps"], info["seconds"],
             info["final_loss"])
    scores = similarity(model, te_i, te_t)
    out = {"retrieval": retrieval_from_scores(scores, test["subcategory"], test["category"], test["titles"], eval_cfg),
           "train": info, "products": {"train": len(tr_i), "test": len(te_i)}}
    both_tr, both_te = np.concatenate([tr_i, tr_t], 1), np.concatenate([te_i, te_t], 1)
    for target in ("category", "subcategory"):
        out[target] = {"image": logistic_regression(tr_i, train[target], te_i, test[target], cfg),
                       "image+title": logistic_regression(both_tr, train[target], both_te, test[target], cfg)}
    return out
