"""The retrieval pair scorer: the same scores as ``RetrievalTask.score`` pair by pair, in
either direction and any order, each distinct pair scored once, and an int8 path that
stays close to fp32 without touching the caller's model."""

import numpy as np
import pytest
import torch
from torch import nn

from kaleido.evaluation import evaluate
from kaleido.evaluation.scorer import PairScorer, quantize_int8
from kaleido.finetune import PairInputs, RetrievalConfig
from kaleido.finetune.retrieval import RetrievalTask
from kaleido.model import KaleidoProcessor, create_model
from kaleido.patches.cache import FeatureCache


@pytest.fixture(scope="module")
def pairs(pretrain_data):
    return PairInputs(list(pretrain_data["catalog"]), FeatureCache(pretrain_data["cache"]),
                      KaleidoProcessor.default(max_text_len=32))


def _task(seed: int = 0, **model) -> RetrievalTask:
    """A tiny retrieval model whose scores tell pairs apart: with BERT's init (std 0.02) every
    pair scores nearly the same, and a mix-up of pairs could pass unseen."""
    torch.manual_seed(seed)
    task = RetrievalTask(create_model("tiny", feature_dim=32, **model), RetrievalConfig()).eval()
    for module in task.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.3)
    return task


def _direct(task, pairs, images, texts) -> np.ndarray:
    """``task.score`` of each pair alone (no batching, no padding)."""
    with torch.no_grad():
        return np.array([task.score(pairs.batch([i], [j])).item()
                         for i, j in zip(np.ravel(images), np.ravel(texts))]).reshape(np.shape(images))


def _kb101_like(pairs, queries=(0, 5, 9), candidates=6, seed=0):
    """(Q, C) query indices repeated and candidate indices, positive first."""
    rng = np.random.default_rng(seed)
    q = np.array(queries)
    c = np.stack([np.r_[i, rng.choice(np.setdiff1d(np.arange(len(pairs)), [i]), candidates - 1, replace=False)]
                  for i in q])
    return np.repeat(q[:, None], candidates, 1), c


def test_evaluate_keeps_the_scorer_name():
    assert evaluate.PairScorer is PairScorer


@pytest.mark.parametrize("model", [{}, {"attn_implementation": "eager"}, {"pooling": "mean"}])
def test_scores_equal_direct_scoring_both_directions(pairs, model):
    task = _task(**model)
    q, c = _kb101_like(pairs)
    scorer = PairScorer(task, pairs, batch_size=4)  # several batches of mixed title lengths
    itr, tir = scorer.score(q, c), scorer.score(c, q)  # image q + text c, image c + text q
    assert itr.shape == tir.shape == q.shape
    np.testing.assert_allclose(itr, _direct(task, pairs, q, c), atol=1e-5, rtol=0)
    np.testing.assert_allclose(tir, _direct(task, pairs, c, q), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(itr[:, 0], tir[:, 0])  # the true pair is one pair
    assert np.abs(itr[:, 1:] - tir[:, 1:]).min() > 1e-4  # the two directions are other pairs
    assert itr.std() > 0.1  # scores that tell pairs apart, so a mix-up would show


def test_order_by_length_changes_no_score_and_pads_less(pairs):
    task = _task()
    rng = np.random.default_rng(1)
    images, texts = rng.integers(0, len(pairs), 120), rng.integers(0, len(pairs), 120)
    lengths = np.array([len(t) for t in pairs.text_ids])
    assert lengths.min() < lengths.max()
    padded = []
    hook = task.model.embeddings.register_forward_hook(lambda m, args, out: padded.append(out.shape[0] * out.shape[1]))
    try:
        by_length = PairScorer(task, pairs, batch_size=8).score(images, texts)
        tokens_sorted, padded[:] = sum(padded), []
        by_key = PairScorer(task, pairs, batch_size=8, sort_by_length=False).score(images, texts)
        tokens_unsorted = sum(padded)
    finally:
        hook.remove()
    np.testing.assert_allclose(by_length, by_key, atol=1e-5, rtol=0)
    perm = rng.permutation(len(images))  # the order the pairs are asked in does not matter either
    np.testing.assert_allclose(PairScorer(task, pairs, batch_size=8).score(images[perm], texts[perm]),
                               by_length[perm], atol=1e-5, rtol=0)
    assert tokens_sorted < tokens_unsorted


def test_each_pair_and_each_image_is_computed_once(pairs):
    task = _task()
    rows = {"pairs": 0, "images": 0}

    def count(name):
        def hook(module, args, out):
            rows[name] += out.shape[0]
        return hook

    hooks = [task.itm.classifier.register_forward_hook(count("pairs")),
             task.model.patch_embeddings.register_forward_hook(count("images"))]
    scorer = PairScorer(task, pairs, batch_size=5)
    images = np.array([0, 0, 1, 2, 2, 0, 0])
    texts = np.array([3, 3, 1, 4, 5, 3, 7])   # 5 distinct pairs of 3 image products
    first = scorer.score(images, texts)
    assert rows == {"pairs": 5, "images": 3} and scorer.scored == 5  # patches once per image
    np.testing.assert_array_equal(scorer.score(images, texts), first)      # nothing recomputed
    assert rows == {"pairs": 5, "images": 3}
    scorer.prepare(np.array([0, 1, 5]), np.array([3, 2, 2]))                # 2 new pairs
    assert rows["pairs"] == 7 and scorer.scored == 7
    for h in hooks:
        h.remove()
    assert first[0] == first[1] == first[5] and first[3] != first[4]


def test_int8_is_close_to_fp32_and_leaves_the_model_alone(pairs):
    task = _task()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    q, c = _kb101_like(pairs, queries=tuple(range(8)), candidates=8)
    fp32 = PairScorer(task, pairs).score(np.r_[q, c], np.r_[c, q])
    int8 = PairScorer(task, pairs, quantize=True).score(np.r_[q, c], np.r_[c, q])
    assert np.isfinite(int8).all()
    assert not np.array_equal(int8, fp32)  # it did run quantised
    assert np.abs(int8 - fp32).max() < 0.25 * (fp32.max() - fp32.min())  # tiny, large weights: coarse
    assert np.corrcoef(int8.ravel(), fp32.ravel())[0, 1] > 0.95
    after = task.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(task.model.encoder.layer[0].intermediate.dense) is nn.Linear
    copy = quantize_int8(task)
    assert isinstance(copy.model.encoder.layer[0].intermediate.dense, torch.ao.nn.quantized.dynamic.Linear)
    with pytest.raises(ValueError, match="CPU only"):
        PairScorer(task, pairs, device="cuda", quantize=True)


def test_a_task_with_its_own_score_is_scored_by_it(pairs):
    class Shifted(RetrievalTask):  # the fast path reproduces RetrievalTask.score only
        def score(self, batch):
            return super().score(batch) + 10.0

    task = _task()
    shifted = Shifted(task.model, RetrievalConfig()).eval()
    shifted.itm.load_state_dict(task.itm.state_dict())
    images, texts = np.array([0, 1, 2, 3]), np.array([3, 1, 0, 2])
    np.testing.assert_allclose(PairScorer(shifted, pairs, batch_size=3).score(images, texts),
                               _direct(task, pairs, images, texts) + 10.0, atol=1e-5, rtol=0)


def test_transient_scores_equal_the_kept_ones_and_are_not_kept(pretrain_data):
    from kaleido.evaluation.scorer import PairScorer
    from kaleido.finetune import PairInputs, RetrievalConfig
    from kaleido.finetune.retrieval import RetrievalTask
    from kaleido.model import KaleidoProcessor, create_model
    from kaleido.patches.cache import FeatureCache

    pairs = PairInputs(list(pretrain_data["catalog"]), FeatureCache(pretrain_data["cache"]),
                       KaleidoProcessor.default(max_text_len=32))
    torch.manual_seed(0)
    scorer = PairScorer(RetrievalTask(create_model("tiny"), RetrievalConfig()), pairs)
    images, texts = np.repeat(np.arange(6), 6), np.tile(np.arange(6), 6)
    scorer.prepare(images[:10], texts[:10])                 # some pairs are known, most are not
    transient = scorer.score_transient(images, texts)
    assert scorer.scored == 10
    assert np.allclose(transient, scorer.score(images, texts), atol=1e-6)
