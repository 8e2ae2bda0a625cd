"""Calibration of the tagger's probabilities and the thresholds of its flags.

* :func:`fit_temperature`: the one scalar ``T`` that minimises the validation negative
  log-likelihood of ``softmax(logits / T)`` (Guo et al. 2017, "On Calibration of Modern
  Neural Networks"); it changes no prediction, only how sure each one claims to be.
* :func:`expected_calibration_error`: the gap between confidence and accuracy, averaged
  over equal-width confidence bins weighted by their share of predictions.
* :func:`precision_threshold`: the lowest confidence above which the validation
  predictions are right at least a given share of the time; the per-field thresholds of
  ``low_confidence`` and ``disagrees_with_catalog`` come from it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: np.ndarray, labels: np.ndarray, steps: int = 200) -> float:
    """The temperature minimising the NLL of ``labels`` (-100 = unknown, left out)."""
    known = labels >= 0
    if known.sum() < 2:
        return 1.0
    z = torch.as_tensor(logits[known], dtype=torch.float32)
    y = torch.as_tensor(labels[known], dtype=torch.long)
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and 0.05 < t < 20 else 1.0


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE (in [0, 1]) of top-1 ``confidence`` against whether it was ``correct``."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if not len(confidence):
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(confidence[sel].mean() - correct[sel].mean())
    return float(ece)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: its range, the number of predictions, mean confidence and accuracy."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None}
            for b in range(bins)]


def precision_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float,
                        min_support: int = 20) -> float:
    """The lowest ``t`` such that predictions with confidence >= ``t`` are right at least
    ``precision`` of the time (over at least ``min_support`` of them); ``inf`` (never) when none is.

    Only thresholds between distinct confidences are candidates: predictions with equal
    confidence are all above a threshold or all below it."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(correct[order])
    n = np.arange(1, len(conf) + 1)
    group_end = np.append(conf[1:] < conf[:-1], True) if len(conf) else np.zeros(0, bool)
    ok = (hits / n >= precision) & (n >= min_support) & group_end
    if not ok.any():
        return float("inf")
    # the largest prefix that still meets the precision; its last confidence is the threshold
    last = int(np.nonzero(ok)[0].max())
    return float(conf[last])
