"""Pre-training: the seven heads, the task's loss sum, and the masked + corrupted samples."""

import numpy as np
import pytest
import torch

from kaleido.alignment.store import load_alignments
from kaleido.model import KaleidoProcessor, create_model
from kaleido.patches.cache import FeatureCache
from kaleido.patches.geometry import level_slices
from kaleido.pretrain.config import TaskConfig
from kaleido.pretrain.data import PretrainDataset, collate_pretrain
from kaleido.pretrain.heads import HEAD_NAMES
from kaleido.pretrain.masking import MaskingConfig
from kaleido.pretrain.task import PretrainTask

LEVELS = level_slices([1, 2, 3, 4, 5])


def _dataset(pretrain_data, tasks=None, masking=None, seed=0):
    cache = FeatureCache(pretrain_data["cache"])
    return PretrainDataset(list(pretrain_data["catalog"]), cache,
                           load_alignments(pretrain_data["cache"] / "alignments.jsonl"),
                           KaleidoProcessor.default(max_text_len=32), masking or MaskingConfig(),
                           tasks or TaskConfig(), seed=seed)


def _task(tasks=None):
    torch.manual_seed(0)
    return PretrainTask(create_model("tiny"), tasks or TaskConfig())


def test_every_head_gets_gradients(pretrain_data):
    data = _dataset(pretrain_data)
    batch = collate_pretrain([data[i] for i in range(8)])
    task = _task()
    out = task(batch)
    assert {f"{n}_loss" for n in HEAD_NAMES if n not in ("itc", "wpa")} <= set(out)  # legacy scheme; WPA is off by default
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, head in task.heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    emb = task.model.patch_embeddings
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in emb.feature_proj.parameters())
    assert task.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_loss_is_the_weighted_sum_and_zero_weight_switches_a_head_off(pretrain_data):
    tasks = TaskConfig(rr=0.0, jps=2.0)
    data = _dataset(pretrain_data, tasks=tasks)
    sample = data[0]
    assert "rr_labels" not in sample and "jps_labels" in sample
    task = _task(tasks)
    assert "rr" not in task.heads
    out = task(collate_pretrain([data[i] for i in range(6)]))
    expected = sum(w * out[f"{n}_loss"] for n, w in tasks.weights().items())
    assert torch.allclose(out["loss"], expected)
    with pytest.raises(ValueError, match="weight 0"):
        PretrainTask(create_model("tiny"), TaskConfig(**{n: 0.0 for n in HEAD_NAMES}))


def test_heads_refuse_a_model_without_their_level():
    with pytest.raises(ValueError, match="2x2"):
        PretrainTask(create_model("tiny", grids=[1, 3, 4, 5]), TaskConfig())


def test_samples_are_seeded_and_change_with_the_epoch(pretrain_data):
    a, b = _dataset(pretrain_data), _dataset(pretrain_data)
    for key in ("input_ids", "patch_features", "itm_labels", "rr_labels", "cp_labels"):
        assert np.array_equal(a[3][key], b[3][key]), key
    before = [a[i]["patch_features"] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not np.array_equal(x, a[i]["patch_features"]) for i, x in enumerate(before))


def test_corruptions_and_targets_match_the_cache(pretrain_data):
    data = _dataset(pretrain_data)
    cache = FeatureCache(pretrain_data["cache"])
    seen_negative = seen_positive = False
    for i in range(len(data)):
        s = data[i]
        item = cache[data.products[i].id]
        assert s["g2cm_index"].shape == (2,) and s["b2cm_index"].shape == (3,)
        assert all(LEVELS[4].start <= p < LEVELS[4].stop for p in s["g2cm_index"])
        assert all(LEVELS[5].start <= p < LEVELS[5].stop for p in s["b2cm_index"])
        np.testing.assert_array_equal(s["g2cm_target"], item.features[s["g2cm_index"]])
        np.testing.assert_array_equal(s["patch_features"][s["b2cm_index"]], 0)
        np.testing.assert_allclose(s["patch_features"][s["g2cm_index"]],
                                   item.grey[s["g2cm_index"] - LEVELS[4].start])
        rr = int(s["rr_labels"])
        want = item.features[0] if rr == 0 else item.rotated[rr - 1]
        np.testing.assert_allclose(s["patch_features"][0], want)
        cp = LEVELS[3].start + int(s["cp_labels"])
        assert not np.allclose(s["patch_features"][cp], item.features[cp])  # a donor's patch
        untouched = [p for p in range(LEVELS[3].start, 55) if p != cp and p not in s["g2cm_index"]
                     and p not in s["b2cm_index"]]
        np.testing.assert_array_equal(s["patch_features"][untouched], item.features[untouched])
        if s["itm_labels"] == 0:
            seen_negative = True
            assert (s["mlm_labels"] == -100).all()  # a borrowed text is masked but not scored
        else:
            seen_positive = True
            assert (s["mlm_labels"] != -100).sum() >= 1
    assert seen_negative and seen_positive


def test_agm_never_masks_both_sides_of_an_aligned_pair(pretrain_data):
    data = _dataset(pretrain_data, tasks=TaskConfig(itm=0.0))  # all positives
    alignments = load_alignments(pretrain_data["cache"] / "alignments.jsonl")
    masked_aligned = 0
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(len(data)):
            s = data[i]
            masked_tokens = set(np.flatnonzero(s["mlm_labels"] != -100))
            cp = LEVELS[3].start + int(s["cp_labels"])
            masked_patches = {cp, *s["g2cm_index"].tolist(), *s["b2cm_index"].tolist()}
            for pair in alignments[data.products[i].id]:
                both = masked_tokens & set(pair.tokens) and pair.patch in masked_patches
                assert not both, (data.products[i].id, pair)
                masked_aligned += bool(masked_tokens & set(pair.tokens) or pair.patch in masked_patches)
    assert masked_aligned > 0


def test_negative_texts_come_from_the_same_subcategory_when_possible(pretrain_data):
    data = _dataset(pretrain_data, tasks=TaskConfig(itm_negative_ratio=1.0, itm_hard_ratio=1.0))
    subcats = [p.subcategory for p in data.products]
    for i in range(len(data)):
        s = data[i]
        j = int(s["text_index"])
        assert s["itm_labels"] == 0 and j != i
        assert len(s["input_ids"]) == len(data.text_ids[j])  # product j's text, partly masked
        assert (s["input_ids"] == data.text_ids[j]).mean() >= 0.6
        if subcats.count(subcats[i]) > 1:
            assert subcats[j] == subcats[i]
