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

from kaleido.evaluation.itm import itm_accuracy
from kaleido.evaluation.kb101 import KB101Config, describe, sample_kb101, title_codes
from kaleido.evaluation.metrics import (classification_metrics, full_catalog_ranks_chunked, ranks_from_scores,
                                        retrieval_summary)
from kaleido.evaluation.scorer import PairScorer
from kaleido.finetune.base import TASK_NAME, load_task, read_task_info
from kaleido.finetune.category import CategoryCollator, CategoryTask, product_label
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
    score_batch_size: int = 0    # retrieval pairs per forward pass (0 = 64 on CPU, 128 on a GPU)
    quantize: bool = False       # retrieval scored by an int8 dynamically quantised copy (CPU only)
    sort_by_length: bool = True  # retrieval pairs scored in order of title length (less padding)
    caption_beam: int = 0        # caption beam width (0 = the checkpoint's own)
    meteor: bool = True          # METEOR needs Java; reported as unavailable without it
    device: str = "auto"         # auto | cpu | cuda
    prior: str = ""              # a `kaleido baseline linear-probe` run: also rank by it (and, exhaustive, by ITM + it)
    prior_weight: float = 1.0    # fused score = ITM log-odds + prior_weight x the reference's logit
    # the first stage (a `kaleido dual train` RUN/final, or a linear-probe run): also ranks by it
    # alone and by the two-stage system (its top rerank_k re-ordered by ITM)
    dual: str = ""
    # the feature cache the first stage reads ("" = --cache): another one when the evaluated model's
    # inputs are not the first stage's (a fixed-grid or pixel cache beside a patch dual encoder)
    dual_cache: str = ""
    rerank_k: int = 10           # two-stage: candidates of the first stage re-ranked, per query
    # two-stage fused systems: the first stage's top rerank_k re-ordered by its logit + w x ITM
    # log-odds, one system per weight w (choose w on the val split, report it on test)
    fusion_weights: list[float] = field(default_factory=list)
    # score every KB-101 and full-catalog pair by ITM (the single-stream system alone: Q x N
    # forward passes); false: only the pairs the two-stage systems re-rank (needs dual=)
    exhaustive: bool = True


def retrieval_task(path: str | Path) -> RetrievalTask:
    """A retrieval scorer from a fine-tuned retrieval folder, or zero-shot from a
    pre-training run's ``final/`` (its ITM head)."""
    if (Path(path) / TASK_NAME).is_file():
        return load_task(path, "retrieval")
    if not is_kaleido_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a Kaleido-BERT folder")
    task = RetrievalTask(create_model(pretrained=str(path)), RetrievalConfig())
    if not task.init_from_pretraining(path):
        raise ValueError(f"{path} has neither a fine-tuned retrieval head nor a pre-trained ITM head")
    return task.eval()


def retrieval_figures(score, products, draws, full_catalog: int, full_score=None) -> dict:
    """KB-101 summary over ``draws`` and full-catalog ranks of one scoring function.

    Args:
        score: ``score(images, texts) -> scores`` of product-index arrays (any shape).
        products: the products the indices refer to (titles decide same-title hits).
        draws: the KB-101 draws (same-title products already excluded from the negatives).
        full_catalog: rank the first N products against each other (0 = skip).
        full_score: the scoring function of the full-catalog row chunks (default ``score``),
            e.g. one that does not keep what it scored; the same-title pairs, scored first by
            ``score`` and kept, must come back from it unchanged.
    """
    full_score = full_score or score
    itr, tir = [], []
    for d in draws:
        q = np.repeat(d.queries[:, None], d.candidates.shape[1], 1)
        itr.append(ranks_from_scores(score(q, d.candidates)))
        tir.append(ranks_from_scores(score(d.candidates, q)))
    result = retrieval_summary(itr, tir)
    n = min(full_catalog, len(products))
    if n >= 2:
        idx = np.arange(n)

        def score_rows(start: int, stop: int) -> np.ndarray:
            images, texts = np.repeat(idx[start:stop], n), np.tile(idx, stop - start)
            return full_score(images, texts).reshape(stop - start, n)  # (rows, n)

        # score_pairs gives the targets from the same-title pairs first: each row scored once
        ranks = full_catalog_ranks_chunked(score_rows, n, groups=title_codes([p.title for p in products[:n]]),
                                           chunk_rows=max(1, (1 << 20) // n), score_pairs=score)
        twins = ranks.pop("in_shared_group")
        result["full_catalog"] = {"products": n, **ranks, "same_title_products": twins}
    return result


def evaluate_retrieval(task: RetrievalTask, pairs: PairInputs, cfg: EvalConfig, cache=None) -> dict:
    """KB-101 (ITR and TIR, averaged over the draws) and full-catalog retrieval.

    A product with the query's title (``str.strip().lower()``) is never a KB-101 negative;
    ``same_title_excluded`` counts those left out. In full-catalog retrieval any product
    with the true one's title is a hit (the headline figures); ``full_catalog["strict"]``
    holds the diagonal-only ranks and ``full_catalog["same_title_products"]`` the number
    of ranked products that have a same-title twin among them. The full-catalog pairs are
    scored in row chunks of about a million pairs, never N x N at once.

    With ``cfg.prior`` (a ``kaleido baseline linear-probe`` run), the same draws are also
    ranked by the linear reference alone (``result["prior"]``) and by the sum of the ITM
    log-odds and ``cfg.prior_weight`` x the reference's logit (``result["fused"]``).

    With ``cfg.dual`` (a first stage: a dual encoder, which needs ``cache``, or a linear-probe
    run), the same draws are ranked by the first stage alone (``result["dual"]``), by the
    two-stage system (``result["two_stage"]``: the first stage's top ``cfg.rerank_k`` candidates
    of each query re-ranked by ITM, the rest below them in the first stage's order; see
    :mod:`kaleido.evaluation.two_stage`) and, per weight w of ``cfg.fusion_weights``, by the
    fused two-stage system (``result["two_stage_fused"][w]``: the top ``rerank_k`` re-ordered by
    the first stage's logit + w x ITM log-odds). With ``cfg.exhaustive=False`` only those
    re-ranked pairs are scored by ITM (Q x rerank_k instead of Q x N passes) and the
    single-stream-only rows are left out.
    """
    device = resolve_device(cfg.device)
    scorer = PairScorer(task, pairs, cfg.score_batch_size, device, quantize=cfg.quantize,
                        sort_by_length=cfg.sort_by_length)
    products = pairs.products
    draws = sample_kb101([p.subcategory or "" for p in products], [p.category or "" for p in products],
                         cfg.kb101, titles=[p.title for p in products])
    if not cfg.exhaustive and not cfg.dual:
        raise ValueError("exhaustive=false scores only the pairs a first stage recalls; set dual=PATH")
    if cfg.exhaustive:
        needed_i, needed_t = [], []
        for d in draws:
            q = np.repeat(d.queries[:, None], d.candidates.shape[1], 1)
            needed_i += [q.ravel(), d.candidates.ravel()]   # ITR: image q with text c; TIR: image c with text q
            needed_t += [d.candidates.ravel(), q.ravel()]
        scorer.prepare(np.concatenate(needed_i), np.concatenate(needed_t), desc="KB-101 pairs")
        # KB-101 pairs are kept (the fused ranking reuses them); full-catalog chunks are not
        result = retrieval_figures(scorer.score, products, draws, cfg.full_catalog, scorer.score_transient)
    else:
        result = {}
    result["sampling"] = describe(draws)
    result["filled_from_category"] = int(sum(d.filled_from_category for d in draws))
    result["filled_from_any"] = int(sum(d.filled_from_any for d in draws))
    result["same_title_excluded"] = int(sum(d.same_title_excluded for d in draws))
    result["itm"] = itm_accuracy(scorer.score, products, seed=cfg.kb101.seed)  # clean pairs, hard negatives
    if cfg.prior:
        from kaleido.baselines.linear_probe import ProbePrior

        prior = ProbePrior(cfg.prior, products)
        w = cfg.prior_weight
        result["prior"] = retrieval_figures(prior.score, products, draws, cfg.full_catalog)
        result["prior"]["itm"] = itm_accuracy(prior.score, products, seed=cfg.kb101.seed)  # the same ITM pairs
    if cfg.prior and cfg.exhaustive:  # the fusion needs ITM on every pair
        result["fused"] = retrieval_figures(lambda i, t: scorer.score(i, t) + w * prior.score(i, t),
                                            products, draws, cfg.full_catalog,
                                            lambda i, t: scorer.score_transient(i, t) + w * prior.score(i, t))
        result["fused"]["prior_weight"] = w
    if cfg.dual:
        result.update(_dual_systems(scorer, products, draws, cache, cfg))
    result["pairs_scored"] = scorer.scored
    return result


def _dual_systems(scorer: PairScorer, products, draws, cache, cfg: EvalConfig) -> dict:
    """The first stage alone, the two-stage system (its top ``rerank_k`` re-ordered by ITM) and
    one fused two-stage system per ``cfg.fusion_weights`` (re-ordered by the first stage's logit
    + w x ITM log-odds), on the same draws and full-catalog products. Only the re-ranked pairs
    are scored by ITM; they are kept, so every weight reuses them."""
    from kaleido.evaluation.two_stage import two_stage_full_catalog, two_stage_rows
    from kaleido.first_stage import load_first_stage

    if cfg.dual_cache:
        from kaleido.patches.cache import FeatureCache

        cache = FeatureCache(cfg.dual_cache)
    stage = load_first_stage(cfg.dual, products, cache, device=cfg.device)
    k = cfg.rerank_k
    n = min(cfg.full_catalog, len(products))
    groups = title_codes([p.title for p in products[:n]]) if n >= 2 else None
    out = {"dual": retrieval_figures(stage.score, products, draws, cfg.full_catalog),
           "first_stage": stage.source}
    # the ITM pairs (true pair vs a same-subcategory negative) scored by the first stage alone
    out["dual"]["itm"] = itm_accuracy(stage.score, products, seed=cfg.kb101.seed)

    def system(second) -> dict:
        figures = retrieval_figures(lambda i, t: two_stage_rows(stage.score(i, t), second, i, t, k),
                                    products, draws, 0)
        if n >= 2:
            full = two_stage_full_catalog(stage.image[:n], stage.text[:n], second, k, groups=groups)
            figures["full_catalog"] = {"products": n, **full}
        figures["rerank_k"] = k
        return figures

    out["two_stage"] = system(scorer.score)
    out["two_stage_fused"] = {}
    for w in cfg.fusion_weights:
        fused = lambda i, t, w=w: stage.score(i, t) + w * scorer.score(i, t)  # noqa: E731
        out["two_stage_fused"][float(w)] = {**system(fused), "fusion_weight": float(w),
                                            "itm": itm_accuracy(fused, products, seed=cfg.kb101.seed)}
    return out


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
        truth = [product_label(p, t) for p in pairs.products]
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
    folders that ``kaleido finetune`` writes (a multitask folder stands for each of its tasks),
    or a pre-training ``final/`` (zero-shot retrieval)."""
    root = Path(root)

    def kinds_of(folder: Path) -> dict[str, Path]:
        info = read_task_info(folder)
        return {kind: folder for kind in info.get("tasks", [info["task"]])}

    if (root / TASK_NAME).is_file():
        return kinds_of(root)
    found = {}
    for kind in ("retrieval", "category", "caption", "multitask"):
        for folder in (root / kind / "final", root / kind):
            if (folder / TASK_NAME).is_file():
                if kind != "multitask":
                    found[kind] = folder
                elif not found:  # the one-encoder model only where no separate fine-tune is (never mixed)
                    found = kinds_of(folder)
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
            out["retrieval"] = evaluate_retrieval(retrieval_task(path), pairs, cfg, features)
        elif kind == "category":
            out.update(evaluate_category(load_task(path, "category"), pairs, cfg))
        elif kind == "caption":
            out["caption"] = evaluate_caption(load_task(path, "caption"), pairs, cfg)
    return out
