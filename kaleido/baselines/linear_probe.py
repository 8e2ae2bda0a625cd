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

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

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


class LinearDualEncoder(nn.Module):
    """Two linear maps (image, text) into one L2-normalised space and a learnable temperature.

    It takes the raw frozen features: the training split's per-dimension mean and std are
    buffers of the model (:meth:`fit_standardisation`), so a saved model embeds new products
    by itself.
    """

    model_type = "kaleido-linear-probe"

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.2,
                 init_temperature: float = 0.07):
        super().__init__()
        self.dims = {"image_dim": image_dim, "text_dim": text_dim, "dim": dim, "dropout": dropout}
        self.image = nn.Sequential(nn.Dropout(dropout), nn.Linear(image_dim, dim))
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(text_dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        for side, d in (("image", image_dim), ("text", text_dim)):
            self.register_buffer(f"{side}_mean", torch.zeros(d))
            self.register_buffer(f"{side}_std", torch.ones(d))

    def fit_standardisation(self, image: np.ndarray, text: np.ndarray) -> None:
        """Per-dimension mean and std of the training features."""
        for side, x in (("image", image), ("text", text)):
            getattr(self, f"{side}_mean").copy_(torch.from_numpy(x.mean(0)))
            getattr(self, f"{side}_std").copy_(torch.from_numpy(x.std(0) + 1e-6))

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """(N, image_dim) raw features -> (N, dim) unit vectors."""
        return F.normalize(self.image((x - self.image_mean) / self.image_std), dim=-1)

    def embed_text(self, x: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) raw title embeddings -> (N, dim) unit vectors."""
        return F.normalize(self.text((x - self.text_mean) / self.text_std), dim=-1)

    def save_pretrained(self, path: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` in the folder ``path``."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"model_type": self.model_type, **self.dims}, indent=2) + "\n")
        save_model(self, str(path / "model.safetensors"))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "LinearDualEncoder":
        from safetensors.torch import load_model

        path = Path(path)
        file = path / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no config.json; not a saved linear probe "
                                    "(`kaleido baseline linear-probe` writes OUT/model)")
        cfg = json.loads(file.read_text())
        if cfg.pop("model_type", None) != cls.model_type:
            raise ValueError(f"{file}: model_type is not {cls.model_type!r}")
        model = cls(**cfg)
        load_model(model, str(path / "model.safetensors"), strict=True)
        return model.eval()


def train_dual_encoder(image: np.ndarray, text: np.ndarray, titles, cfg: LinearProbeConfig) -> tuple[LinearDualEncoder, dict]:
    """Train the linear dual encoder on the raw frozen features (standardised inside).

    Args:
        image: (N, Di) image features of the training products.
        text: (N, Dt) title embeddings, row-aligned with ``image``.
        titles: (N,) titles; same-title products in a batch are not each other's negatives.
        cfg: the recipe.

    Returns:
        The model (eval mode) and ``{"seconds", "final_loss", "steps", "temperature"}``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = LinearDualEncoder(image.shape[1], text.shape[1], cfg.dim, cfg.dropout, cfg.init_temperature)
    model.fit_standardisation(image, text)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xi, xt = torch.from_numpy(image.astype(np.float32)), torch.from_numpy(text.astype(np.float32))
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
                   "temperature": float(1.0 / model.logit_scale.detach().exp())}


def similarity(model: LinearDualEncoder, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(N_images, N_texts) cosine similarities of raw features."""
    with torch.no_grad():
        return (model.embed_image(torch.from_numpy(image.astype(np.float32)))
                @ model.embed_text(torch.from_numpy(text.astype(np.float32))).t()).numpy()


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
        "subcategory": {...}, "train": {...}, "products": {"train": n, "test": n}, "model": the
        trained LinearDualEncoder}``.
    """
    model, info = train_dual_encoder(train["image"], train["text"], train["titles"], cfg)
    log.info("linear dual encoder: %d steps in %.1f s, final loss %.3f", info["steps"], info["seconds"],
             info["final_loss"])
    scores = similarity(model, test["image"], test["text"])
    out = {"retrieval": retrieval_from_scores(scores, test["subcategory"], test["category"], test["titles"], eval_cfg),
           "train": info, "products": {"train": len(train["image"]), "test": len(test["image"])}, "model": model}
    # the classifiers see the same standardised features
    def standard(x: np.ndarray, side: str) -> np.ndarray:
        mean, std = getattr(model, f"{side}_mean").numpy(), getattr(model, f"{side}_std").numpy()
        return ((x - mean) / std).astype(np.float32)

    tr_i, tr_t = standard(train["image"], "image"), standard(train["text"], "text")
    te_i, te_t = standard(test["image"], "image"), standard(test["text"], "text")
    both_tr, both_te = np.concatenate([tr_i, tr_t], 1), np.concatenate([te_i, te_t], 1)
    for target in ("category", "subcategory"):
        out[target] = {"image": logistic_regression(tr_i, train[target], te_i, test[target], cfg),
                       "image+title": logistic_regression(both_tr, train[target], both_te, test[target], cfg)}
    return out


def stored_image_features(run: str | Path) -> dict[str, np.ndarray]:
    """``{product id: feature}`` of every image feature chunk a linear-probe run cached."""
    out: dict[str, np.ndarray] = {}
    for file in sorted(Path(run).glob("features/*/chunk-*.npz")):
        stored = np.load(file, allow_pickle=False)
        out.update(zip(stored["ids"].tolist(), stored["features"]))
    return out


class ProbePrior:
    """The linear reference as a pair scorer over ``products``: ``score(images, texts)`` is its
    logit ``sim / temperature`` for product-index arrays, the prior that re-ranking adds to ITM.

    Args:
        run: a ``kaleido baseline linear-probe`` folder (``model/`` and the feature chunks of
            the split being evaluated).
        products: the evaluated products, in the scorer's order.
    """

    def __init__(self, run: str | Path, products):
        model = LinearDualEncoder.from_pretrained(Path(run) / "model")
        feats = stored_image_features(run)
        missing = [p.id for p in products if p.id not in feats]
        if missing:
            raise ValueError(f"{run} has no whole-image feature for {len(missing)} of the {len(products)} "
                             f"products (e.g. {missing[:3]}); run `kaleido baseline linear-probe ... --split` "
                             "on the split being evaluated")
        image = np.stack([feats[p.id] for p in products]).astype(np.float32)
        from kaleido.baselines.features import title_embeddings

        text = title_embeddings([p.title for p in products]).astype(np.float32)
        with torch.no_grad():
            self.image = model.embed_image(torch.from_numpy(image)).numpy()
            self.text = model.embed_text(torch.from_numpy(text)).numpy()
            self.scale = float(model.logit_scale.exp().clamp(max=100.0))

    def score(self, images, texts) -> np.ndarray:
        images, texts = np.asarray(images), np.asarray(texts)
        flat = np.einsum("ij,ij->i", self.image[images.ravel()], self.text[texts.ravel()])
        return (self.scale * flat).reshape(images.shape).astype(np.float32)
