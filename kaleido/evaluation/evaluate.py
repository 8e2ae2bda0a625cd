"""Evaluate fine-tuned Kaleido-BERT checkpoints: KB-101 and full-catalog retrieval,
category / subcategory accuracy and macro-F1, and caption metrics.

A single-stream model scores every (image, text) pair with a full forward pass, so the
scorer gathers every pair a protocol needs, scores each distinct pair once in batches,
and then ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kaleido.evaluation.kb101 import KB101Config, describe, sample_kb101
from kaleido.evaluation.metrics import (classification_metrics, full_catalog_ranks, ranks_from_scores,
                                        retrieval_summary)
from kaleido.finetune.base import TASK_NAME, load_task, read_task_info
from kaleido.finetune.category import CategoryCollator, CategoryTask
from kaleido.finetune.pairs import PairInputs
from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
from kaleido.model import create_model, is_kaleido_checkpoint
from kaleido.training.loop import resolve_device

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """What ``kaleido eval`` measures, and at what size."""

    kb101: KB101Config = field(default_factory=KB101Config)
    full_catalog: int = 1000     # products ranked in full-catalog retrieval (N x N pairs; 0 = skip)
    limit: int = 0               # first N products of the split only (0 = all): quick runs
    batch_size: int = 128        # pairs per forward pass
    caption_beam: int = 0        # caption beam width (0 = the checkpoint's own)
    meteor: bool = True          # METEOR needs Java; reported as unavailable without it
    device: str = "auto"         # auto | cpu | cuda


class PairScorer:
    """Match scores of (image product, text product) pairs; each distinct pair scored once."""

    def __init__(self, task: RetrievalTask, pairs: PairInputs, batch_size: int = 128,
                 device: torch.device | None = None):
        self.task, self.pairs, self.batch_size = task, pairs, batch_size
        self.device = device or torch.device("cpu")
        self.n = len(pairs)
        self._keys = np.zeros(0, dtype=np.int64)
        self._scores = np.zeros(0, dtype=np.float32)

    @property
    def scored(self) -> int:
        return len(self._keys)

    def prepare(self, images: np.ndarray, texts: np.ndarray, desc: str = "scoring") -> None:
        """Score every pair not scored yet (one progress bar over all of them)."""
        keys = np.unique(np.asarray(images, dtype=np.int64) * self.n + np.asarray(texts, dtype=np.int64))
        todo = np.setdiff1d(keys, self._keys, assume_unique=True)
        if not len(todo):
            return
        out = np.empty(len(todo), dtype=np.float32)
        self.task.eval().to(self.device)
        with torch.no_grad(), tqdm(total=len(todo), desc=desc, unit="pair") as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                batch = self.pairs.batch(chunk // self.n, chunk % self.n)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out[start:start + len(chunk)] = self.task.score(batch).cpu().numpy()
                bar.update(len(chunk))
        keys = np.concatenate([self._keys, todo])
        order = np.argsort(keys)
        self._keys, self._scores = keys[order], np.concatenate([self._scores, out])[order]

    def score(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        """Scores of the pairs ``(images[k], texts[k])``, same shape as the inputs."""
        images, texts = np.asarray(images), np.asarray(texts)
        self.prepare(images.ravel(), texts.ravel())
        keys = images.astype(np.int64) * self.n + texts.astype(np.int64)
        return self._scores[np.searchsorted(self._keys, keys)]


def retrieval_task(path: str | Path) -> RetrievalTask:
    """A retrieval scorer from a fine-tuned retrieval folder, or zero-shot from a
    pre-training run's ``final/`` (its ITM head)."""
    if (Path(path) / TASK_NAME).is_file():
        task = load_task(path)
        if not isinstance(task, RetrievalTask):
            raise ValueError(f"{path} is a fine-tuned {read_task_info(path)['task']} model, not retrieval")
        return task
    if not is_kaleido_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a Kaleido-BERT folder")
    task = RetrievalTask(create_model(pretrained=str(path)), RetrievalConfig())
    if not task.init_from_pretraining(path):
        raise ValueError(f"{path} has neither a fine-tuned retrieval head nor a pre-trained ITM head")
    return task.eval()


def evaluate_retrieval(task: RetrievalTask, pairs: PairInputs, cfg: EvalConfig) -> dict:
    """KB-101 (ITR and TIR, averaged over the draws) and full-catalog retrieval."""
    device = resolve_device(cfg.device)
    scorer = PairScorer(task, pairs, cfg.batch_size, device)
    products = pairs.products
    draws = sample_kb101([p.subcategory or "" for p in products], [p.category or "" for p in products],
                         cfg.kb101)
    needed_i, needed_t = [], []
    for d in draws:
        q = np.repeat(d.queries[:, None], d.candidates.shape[1], 1)
        needed_i += [q.ravel(), d.candidates.ravel()]   # ITR: image q with text c; TIR: image c with text q
        needed_t += [d.candidates.ravel(), q.ravel()]
    scorer.prepare(np.concatenate(needed_i), np.concatenate(needed_t), desc="KB-101 pairs")
    itr, tir = [], []
    for d in draws:
        q = np.repeat(d.queries[:, None], d.candidates.shape[1], 1)
        itr.append(ranks_from_scores(scorer.score(q, d.candidates)))
        tir.append(ranks_from_scores(scorer.score(d.candidates, q)))
    result = retrieval_summary(itr, tir)
    result["sampling"] = describe(draws)
    result["filled_from_category"] = int(sum(d.filled_from_category for d in draws))
    result["filled_from_any"] = int(sum(d.filled_from_any for d in draws))
    n = min(cfg.full_catalog, len(products))
    if n >= 2:
        idx = np.arange(n)
        scorer.prepare(np.repeat(idx, n), np.tile(idx, n), desc=f"full catalog {n}x{n}")
        result["full_catalog"] = {"products": n, **full_catalog_ranks(scorer.score(idx[:, None], idx[None, :]))}
    result["pairs_scored"] = scorer.scored
    return result


def evaluate_category(task: CategoryTask, pairs: PairInputs, cfg: EvalConfig) -> dict:
    """Accuracy and macro-F1 per target; products whose label the classifier never saw
    count as errors (``unseen``)."""
    device = resolve_device(cfg.device)
    task.eval().to(device)
    collate = CategoryCollator(pairs, task.cfg.inputs)
    preds = {t: [] for t in task.labels}
    with torch.no_grad():
        for start in tqdm(range(0, len(pairs), cfg.batch_size), desc="category", unit="batch"):
            items = [{"index": i} for i in range(start, min(start + cfg.batch_size, len(pairs)))]
            batch = {k: v.to(device) for k, v in collate(items).items()}
            for t, logits in task.logits(batch).items():
                preds[t] += logits.argmax(1).tolist()
    out = {}
    for t, names in task.labels.items():
        truth = [getattr(p, t) or "" for p in pairs.products]
        predicted = [names[k] for k in preds[t]]
        out[t] = {**classification_metrics(truth, predicted), "unseen": sum(x not in names for x in truth)}
    return out


def evaluate_caption(task, pairs: PairInputs, cfg: EvalConfig) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr of the generated captions against the titles."""
    from sat_captioner.metrics import caption_scores

    device = resolve_device(cfg.device)
    task.eval().to(device)
    if cfg.caption_beam:
        task.cfg.beam_size = cfg.caption_beam
    tok = pairs.processor.tokenizer
    hyps, refs = {}, {}
    bs = max(1, cfg.batch_size // 4)
    for start in tqdm(range(0, len(pairs), bs), desc="captions", unit="batch"):
        idx = list(range(start, min(start + bs, len(pairs))))
        batch = pairs.batch(idx, idx)
        ids = task.generate(batch["patch_features"].to(device), batch["patch_positions"].to(device),
                            tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
        for i, row in zip(idx, ids):
            pid = pairs.products[i].id
            hyps[pid] = tok.decode(row, skip_special_tokens=True)
            refs[pid] = [tok.decode(pairs.text_ids[i], skip_special_tokens=True)]
    scores = caption_scores(refs, hyps, meteor=cfg.meteor)
    examples = {pid: {"caption": hyps[pid], "title": refs[pid][0]} for pid in list(hyps)[:20]}
    return {"scores": scores, "products": len(hyps), "examples": examples}


def find_checkpoints(root: str | Path) -> dict[str, Path]:
    """``{kind: folder}`` under ``root``: a fine-tuned task folder itself, the ``<kind>/final``
    folders that ``kaleido finetune`` writes, or a pre-training ``final/`` (zero-shot retrieval)."""
    root = Path(root)
    if (root / TASK_NAME).is_file():
        return {read_task_info(root)["task"]: root}
    found = {}
    for kind in ("retrieval", "category", "caption"):
        for folder in (root / kind / "final", root / kind):
            if (folder / TASK_NAME).is_file():
                found[kind] = folder
                break
    if not found and is_kaleido_checkpoint(root):
        found["retrieval"] = root  # zero-shot, from the pre-trained ITM head
    if not found:
        raise FileNotFoundError(f"{root}: no fine-tuned Kaleido-BERT task found (expected finetune.json, "
                                "or retrieval/final, category/final, caption/final below it)")
    return found


def evaluate(checkpoints: dict[str, Path], products: list, cache, cfg: EvalConfig) -> dict:
    """Every measure the checkpoints allow, on ``products`` (e.g. the test split).

    Returns:
        ``{"retrieval": ..., "category": ..., "subcategory": ..., "caption": ..., "products": n}``
        for whichever tasks there are.
    """
    from kaleido.finetune.run import load_processor
    from kaleido.patches.cache import FeatureCache

    features = FeatureCache(cache)
    products = products[:cfg.limit] if cfg.limit else products
    out: dict = {}
    for kind, path in checkpoints.items():
        processor = load_processor(path, 64, features.meta["grids"])
        pairs = PairInputs(products, features, processor)
        out["products"] = len(pairs)
        log.info("evaluating %s from %s on %d products", kind, path, len(pairs))
        if kind == "retrieval":
            out["retrieval"] = evaluate_retrieval(retrieval_task(path), pairs, cfg)
        elif kind == "category":
            out.update(evaluate_category(load_task(path), pairs, cfg))
        elif kind == "caption":
            out["caption"] = evaluate_caption(load_task(path), pairs, cfg)
    return out
