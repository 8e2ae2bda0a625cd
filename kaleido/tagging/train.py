"""Training, calibrating and scoring the attribute tagger.

:func:`train_tagger` fits one network per input mode on the training split (all fields
jointly, classes absent from training unknown, as in the category fine-tune), then on the
validation split fits each field's temperature and its two confidence thresholds.
:func:`evaluate_tagger` scores a split: accuracy, macro-F1 and expected calibration error
per field. :func:`reference_rows` is the bar: logistic regressions on the frozen pooled
image feature alone and on it plus the title embedding.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kaleido.evaluation.metrics import classification_metrics
from kaleido.finetune.category import product_label, resolve_targets
from kaleido.tagging.calibration import expected_calibration_error, fit_temperature, precision_threshold
from kaleido.tagging.model import MODES, AttributeTagger, TaggerConfig

log = logging.getLogger(__name__)

UNKNOWN = -100


@dataclass
class TaggerTrainConfig:
    """The recipe (measured in docs/MEASUREMENTS.md, "Tagging")."""

    hidden: int = 512
    dropout: float = 0.3
    input_dropout: float = 0.2
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1.0e-3            # AdamW, one-cycle schedule
    weight_decay: float = 1.0e-2
    seed: int = 0
    threads: int = 0              # torch threads while training (0 = leave as is)
    # flag thresholds, per field, chosen on the validation split
    low_confidence_precision: float = 0.90   # below the confidence with this precision: low_confidence
    disagree_precision: float = 0.97         # at or above the confidence with this precision, a
                                             # prediction that differs from the catalog is flagged


def tag_fields(products, wanted=None) -> list[str]:
    """The fields to tag: category, subcategory and every attribute column with at least two
    labels among ``products`` (or ``wanted``, checked)."""
    if not wanted:
        return resolve_targets(products, ["all"])
    thin = [f for f in wanted if len({product_label(p, f) for p in products} - {""}) < 2]
    if thin:
        raise ValueError(f"fields {thin} have fewer than two labels among the training products")
    return list(wanted)


def encode_labels(values, names: list[str]) -> np.ndarray:
    index = {n: k for k, n in enumerate(names)}
    return np.array([index.get(v, UNKNOWN) if v else UNKNOWN for v in values], dtype=np.int64)


def _fit_net(net, x: np.ndarray, y: dict[str, np.ndarray], cfg: TaggerTrainConfig) -> float:
    torch.manual_seed(cfg.seed)
    net.fit_standardisation(x)
    xt = torch.from_numpy(x)
    yt = {f: torch.from_numpy(v) for f, v in y.items()}
    steps_per_epoch = -(-len(xt) // cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b:b + cfg.batch_size]
            logits = net(xt[idx])
            losses = [F.cross_entropy(z, yt[f][idx], ignore_index=UNKNOWN)
                      for f, z in logits.items() if (yt[f][idx] != UNKNOWN).any()]
            loss = torch.stack(losses).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return float(loss.detach())


def train_tagger(train: dict, val: dict, fields: list[str], feature_cfg: dict,
                 cfg: TaggerTrainConfig = TaggerTrainConfig(), modes=MODES) -> tuple[AttributeTagger, dict]:
    """Train, calibrate and threshold a tagger.

    Args:
        train, val: ``{"image": (N, C), "colour": (N, D), "text": (N, T), "labels": {field: [str]}}``.
        fields: the fields to tag.
        feature_cfg: the :class:`~kaleido.tagging.features.TagFeatureConfig` of the features
            (stored in the tagger's config, checked against a cache at tagging time).
        cfg: the recipe.
        modes: the input modes to train.

    Returns:
        The tagger (eval mode) and ``{mode: {"seconds", "final_loss"}}``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labels = {f: sorted(set(train["labels"][f]) - {""}) for f in fields}
    tcfg = TaggerConfig(fields=list(fields), labels=labels, image_dim=train["image"].shape[1],
                        colour_dim=train["colour"].shape[1], text_dim=train["text"].shape[1] if "text" in train else 0,
                        hidden=cfg.hidden, dropout=cfg.dropout, input_dropout=cfg.input_dropout,
                        modes=list(modes), features=dict(feature_cfg))
    model = AttributeTagger(tcfg)
    y_train = {f: encode_labels(train["labels"][f], labels[f]) for f in fields}
    y_val = {f: encode_labels(val["labels"][f], labels[f]) for f in fields}
    info = {}
    for mode in modes:
        start = time.perf_counter()
        x = AttributeTagger.inputs(mode, train["image"], train["colour"], train.get("text"))
        final = _fit_net(model.net(mode), x, y_train, cfg)
        xv = torch.from_numpy(AttributeTagger.inputs(mode, val["image"], val["colour"], val.get("text")))
        with torch.no_grad():
            logits = {f: z.numpy() for f, z in model.logits(mode, xv).items()}
        tcfg.temperature[mode] = {f: fit_temperature(logits[f], y_val[f]) for f in fields}
        tcfg.thresholds[mode] = {}
        for f in fields:
            prob = torch.softmax(torch.from_numpy(logits[f]) / tcfg.temperature[mode][f], -1).numpy()
            known = y_val[f] != UNKNOWN
            conf, correct = prob.max(1)[known], (prob.argmax(1) == y_val[f])[known]
            tcfg.thresholds[mode][f] = {
                "low_confidence": precision_threshold(conf, correct, cfg.low_confidence_precision),
                "disagree": precision_threshold(conf, correct, cfg.disagree_precision)}
        info[mode] = {"seconds": time.perf_counter() - start, "final_loss": final}
        log.info("tagger %s: trained in %.1f s, final loss %.3f", mode, info[mode]["seconds"], final)
    return model.eval(), info


def evaluate_tagger(model: AttributeTagger, data: dict, mode: str) -> dict:
    """Per field: accuracy, macro-F1 (over products with a label; labels the tagger never saw
    count as errors, ``unseen``), ECE of the calibrated probabilities and of the raw ones."""
    x = AttributeTagger.inputs(mode, data["image"], data["colour"], data.get("text"))
    probs, raw_probs = model.predict_proba(mode, x), model.predict_proba(mode, x, calibrated=False)
    out = {}
    for f in model.cfg.fields:
        truth = np.array(data["labels"][f], dtype=object)
        has = truth != ""
        if not has.any():
            continue
        names = np.array(model.cfg.labels[f], dtype=object)
        prob = probs[f][has]
        pred = names[prob.argmax(1)]
        correct = pred == truth[has]
        raw = raw_probs[f][has]
        out[f] = {**classification_metrics(list(truth[has]), list(pred)),
                  "unseen": int(sum(t not in set(names) for t in truth[has])),
                  "ece": expected_calibration_error(prob.max(1), correct),
                  "ece_uncalibrated": expected_calibration_error(raw.max(1), correct)}
        out[f].pop("classes", None)
    return out


def reference_rows(train: dict, test: dict, fields: list[str], max_iter: int = 2000) -> dict:
    """The bar: ``{"image": {field: metrics}, "image+title": {...}}`` of logistic regressions
    on the standardised pooled image feature (and the title embedding)."""
    from sklearn.linear_model import LogisticRegression

    def standard(a, b):
        mean, std = a.mean(0), a.std(0) + 1e-6
        return (a - mean) / std, (b - mean) / std

    out = {}
    for mode in MODES:
        tr = train["image"] if mode == "image" else np.concatenate([train["image"], train["text"]], 1)
        te = test["image"] if mode == "image" else np.concatenate([test["image"], test["text"]], 1)
        tr, te = standard(tr, te)
        out[mode] = {}
        for f in fields:
            y = np.array(train["labels"][f], dtype=object)
            t = np.array(test["labels"][f], dtype=object)
            if not (t != "").any():
                continue
            clf = LogisticRegression(max_iter=max_iter).fit(tr[y != ""], y[y != ""].astype(str))
            pred = clf.predict(te[t != ""])
            m = classification_metrics(list(t[t != ""].astype(str)), list(pred))
            m.pop("classes", None)
            out[mode][f] = m
    return out
