"""Downstream tasks: the caption masks, retrieval groups and losses, category labels,
saving and loading, and a tiny pretrain -> finetune -> eval run through the CLI."""

import json

import numpy as np
import pytest
import torch

from kaleido.cli import main
from kaleido.data import read_split
from kaleido.finetune import (CaptionConfig, CategoryConfig, PairInputs, RetrievalConfig, load_task,
                              seq2seq_pattern)
from kaleido.finetune.caption import CaptionCollator, CaptionTask
from kaleido.finetune.category import UNKNOWN, CategoryCollator, CategoryDataset, CategoryTask
from kaleido.finetune.retrieval import PairCollator, RetrievalDataset, RetrievalTask
from kaleido.model import KaleidoProcessor, create_model
from kaleido.patches.cache import FeatureCache
from kaleido.training import param_groups


@pytest.fixture(scope="module")
def pairs(pretrain_data):
    return PairInputs(list(pretrain_data["catalog"]), FeatureCache(pretrain_data["cache"]),
                      KaleidoProcessor.default(max_text_len=32))


def test_seq2seq_pattern_is_causal_over_text_and_keeps_patches_apart():
    m = seq2seq_pattern(4, 3)
    assert m.shape == (7, 7)
    assert m[:, 4:].all()                      # everyone sees every patch
    assert not m[4:, :4].any()                 # patches never see the text
    assert torch.equal(m[:4, :4], torch.ones(4, 4, dtype=torch.bool).tril())  # token t sees 0..t


def test_caption_labels_are_the_next_token(pairs):
    batch = CaptionCollator(pairs, CaptionConfig())([0, 1])
    ids, labels, mask = batch["input_ids"], batch["caption_labels"], batch["attention_mask"]
    n = int(mask[0].sum())
    assert torch.equal(labels[0, :n - 1], ids[0, 1:n])          # ..., last word -> [SEP]
    assert (labels[0, n - 1:] == -100).all()                     # nothing after [SEP]


def test_mask_all_inputs_are_masks_and_labels_the_title(pairs):
    cfg = CaptionConfig(mode="mask_all", max_len=6)
    batch = CaptionCollator(pairs, cfg)([0])
    tok = pairs.processor.tokenizer
    ids = batch["input_ids"][0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert (ids[1:-1] == tok.mask_token_id).all() and len(ids) == 8
    title = pairs.text_ids[0][1:-1][:6]
    labels = batch["caption_labels"][0]
    assert labels[1:1 + len(title)].tolist() == title.tolist()


def test_retrieval_groups_hold_one_true_pair_and_real_negatives(pairs):
    data = RetrievalDataset(pairs, RetrievalConfig(text_negatives=2, image_negatives=3), seed=0)
    for i in range(len(data)):
        g = data[i]
        assert g["images"][0] == g["texts"][0] == i
        assert (g["images"][1:3] == i).all() and (g["texts"][1:3] != i).all()   # wrong texts
        assert (g["texts"][3:] == i).all() and (g["images"][3:] != i).all()     # wrong images
    again = RetrievalDataset(pairs, RetrievalConfig(text_negatives=2, image_negatives=3), seed=0)
    assert all(np.array_equal(data[i]["texts"], again[i]["texts"]) for i in range(len(data)))
    batch = PairCollator(pairs)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 12 and int(batch["group_size"]) == 6


@pytest.mark.parametrize("loss, expected", [
    ("softmax", float(-torch.log_softmax(torch.tensor([2.0, 0.0, 1.0]), 0)[0])),
    ("bce", float(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])))),
    ("triplet", (max(0, 0.2 - 2 + 0) + max(0, 0.2 - 2 + 1)) / 2),
])
def test_retrieval_losses(loss, expected, monkeypatch):
    task = RetrievalTask(create_model("tiny"), RetrievalConfig(loss=loss))
    monkeypatch.setattr(task, "score", lambda batch: torch.tensor([2.0, 0.0, 1.0]))
    out = task({"group_size": torch.tensor(3)})
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["retrieval_acc"] == 1.0


def test_retrieval_hard_ratio_mixes_same_subcategory_and_random_negatives(pairs):
    subcats = np.array([p.subcategory for p in pairs.products])

    def same_share(cfg):
        data = RetrievalDataset(pairs, cfg, seed=0)
        hits = total = 0
        for epoch in range(5):
            data.set_epoch(epoch)
            for i in range(len(data)):
                if (subcats == subcats[i]).sum() < 4:
                    continue
                negatives = data[i]["texts"][1:3]
                hits += (subcats[negatives] == subcats[i]).sum()
                total += len(negatives)
        return hits / total

    hard = same_share(RetrievalConfig(text_negatives=2, image_negatives=0))
    mixed = same_share(RetrievalConfig(text_negatives=2, image_negatives=0, hard_ratio=0.0))
    assert hard == 1.0 and mixed < 0.8
    with pytest.raises(ValueError, match="hard_ratio"):
        RetrievalConfig(hard_ratio=1.5)


def test_category_labels_unknown_to_the_classifier_are_ignored(pairs):
    names = sorted({p.category for p in pairs.products})
    data = CategoryDataset(pairs, {"category": names[1:]})  # pretend names[0] never occurred in training
    for i, p in enumerate(pairs.products):
        label = data[i]["category_labels"]
        assert (label == UNKNOWN) == (p.category == names[0])
    with pytest.raises(ValueError, match="category targets"):
        CategoryConfig(targets=[])
    with pytest.raises(ValueError, match="stands alone"):
        CategoryConfig(targets=["all", "gender"])


def test_category_means_pooling_reads_the_text_and_patch_means_and_survives_saving(pairs, tmp_path):
    torch.manual_seed(0)
    labels = {"category": sorted({p.category for p in pairs.products})}
    task = CategoryTask(create_model("tiny", feature_dim=32), CategoryConfig(targets=["category"], pooling="means"),
                        labels).eval()
    data = CategoryDataset(pairs, labels)
    batch = CategoryCollator(pairs, "image+text")([data[i] for i in range(4)])
    with torch.no_grad():
        out = task.model(batch["input_ids"], batch["patch_features"], batch["patch_positions"], batch["attention_mask"])
        text, patches = out.modality_means()
        head = task.classifiers["category"]
        assert head.in_features == 2 * task.model.config.hidden_size
        expected = head(torch.cat([text, patches], dim=-1))
        torch.testing.assert_close(task.logits(batch)["category"], expected)
        # the two halves of the head see different things: the text half moves with the title
        assert not torch.allclose(text, patches)
        task.save_pretrained(tmp_path / "c")
        again = load_task(tmp_path / "c")
        assert again.cfg.pooling == "means"
        torch.testing.assert_close(again.logits(batch)["category"], task.logits(batch)["category"])
    with pytest.raises(ValueError, match="pooling"):
        CategoryConfig(pooling="cls")
    with pytest.raises(ValueError, match="head_lr_scale"):
        CategoryConfig(head_lr_scale=0)


def test_category_input_skip_reads_the_1x1_patch_feature(pairs, tmp_path):
    torch.manual_seed(0)
    labels = {"category": sorted({p.category for p in pairs.products})}
    task = CategoryTask(create_model("tiny", feature_dim=32), CategoryConfig(targets=["category"], input_skip=True),
                        labels).eval()
    data = CategoryDataset(pairs, labels)
    batch = CategoryCollator(pairs, "image")([data[i] for i in range(4)])
    h = task.model.config.hidden_size
    assert task.classifiers["category"].in_features == h + 32
    with torch.no_grad():
        base = task.logits(batch)["category"]
        changed = dict(batch, patch_features=batch["patch_features"].clone())
        changed["patch_features"][:, 0] = torch.randn_like(changed["patch_features"][:, 0])
        task.save_pretrained(tmp_path / "s")
        torch.testing.assert_close(load_task(tmp_path / "s").logits(changed)["category"], task.logits(changed)["category"])
        task.classifiers["category"].weight[:, :h] = 0      # only the skip half left
        skip_only, skip_changed = task.logits(batch)["category"], task.logits(changed)["category"]
        assert not torch.allclose(skip_only, skip_changed)  # the skip reads the 1x1 patch
        assert not torch.allclose(base, skip_only)
    groups = param_groups(CategoryTask(create_model("tiny", feature_dim=32),
                                       CategoryConfig(targets=["category"], input_skip=True, head_lr_scale=10), labels),
                          0.01, lr=1e-4)
    assert sum(len(g["params"]) for g in groups if "lr" in g) == 4   # classifier and skip norm, weights and biases


def test_category_head_learns_at_its_own_rate(pairs):
    labels = {"category": sorted({p.category for p in pairs.products})}
    task = CategoryTask(create_model("tiny", feature_dim=32), CategoryConfig(targets=["category"], head_lr_scale=10),
                        labels)
    groups = param_groups(task, 0.01, lr=1e-4)
    head = {id(p) for p in task.classifiers.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert not ids or ids <= head or not ids & head   # no group mixes head and encoder
        if ids & head:
            assert g["lr"] == pytest.approx(1e-3)
        elif ids:
            assert "lr" not in g                          # the encoder at the run's rate
    assert sum(len(g["params"]) for g in groups if "lr" in g) == len(head)


def test_save_and_load_keep_the_scores(pairs, tmp_path):
    torch.manual_seed(0)
    task = RetrievalTask(create_model("tiny", feature_dim=32), RetrievalConfig()).eval()
    batch = pairs.batch([0, 1, 2], [0, 2, 1])
    with torch.no_grad():
        before = task.score(batch)
    task.save_pretrained(tmp_path / "r")
    again = load_task(tmp_path / "r")
    with torch.no_grad():
        assert torch.equal(before, again.score(batch))
    cap = CaptionTask(create_model("tiny", feature_dim=32), CaptionConfig(max_len=5)).eval()
    cap.save_pretrained(tmp_path / "c")
    cap2 = load_task(tmp_path / "c")
    assert cap2.lm.decoder.weight is cap2.model.word_embeddings.weight  # still tied after loading
    tok = pairs.processor.tokenizer
    args = (batch["patch_features"], batch["patch_positions"], tok.cls_token_id, tok.sep_token_id)
    assert cap.generate(*args) == cap2.generate(*args)
    assert all(len(c) <= 5 for c in cap.generate(*args))
    cap.cfg.beam_size = 2
    assert all(len(c) <= 5 for c in cap.generate(*args))


def test_pretrain_finetune_eval_end_to_end(pretrain_data, tmp_path, capsys):
    d = pretrain_data
    data_args = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]),
                 "--cache", str(d["cache"]), "--split-file", str(d["split"])]
    pre = tmp_path / "pre"
    assert main(["pretrain", "--config", "tiny", *data_args, "--out", str(pre), "train.max_steps=3"]) == 0
    for kind in ("retrieval", "category", "caption"):
        assert main(["finetune", kind, "--from", str(pre / "final"), "--config", "tiny", *data_args,
                     "--out", str(tmp_path / "ft" / kind), "data.val_split=val"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "ft"), *data_args, "--split", "train",
                 "--json", str(out), "kb101.queries=6", "kb101.negatives=8", "kb101.draws=2",
                 "full_catalog=6", "meteor=false"]) == 0
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "Table 3" in printed
    result = json.loads(out.read_text())
    r = result["retrieval"]
    assert r["draws"] == 2 and 0 <= r["ITR"]["R@1"] <= r["ITR"]["R@5"] <= r["ITR"]["R@10"] <= 1
    assert 0 <= r["SumR"] <= 600 and r["full_catalog"]["products"] == 6
    n_train = sum(s == "train" for s in read_split(d["split"]).values())
    assert result["products"] == n_train > 6  # the train split, every product of it cached
    assert r["queries"] == [6, 6]  # kb101.queries reached the protocol (the split holds more)
    # each distinct pair once: at least one draw's 6 x 9 ITR pairs; at most both draws' ITR and
    # TIR pairs, the 6 x 6 full catalog and 2 ITM-accuracy pairs per product
    assert 6 * 9 <= r["pairs_scored"] <= 2 * 2 * 6 * 9 + 6 * 6 + 2 * n_train
    assert 0 <= result["category"]["accuracy"] <= 1 and "macro_f1" in result["subcategory"]
    assert set(result["caption"]["scores"]) >= {"BLEU-4", "CIDEr", "ROUGE-L"}
    # zero-shot retrieval straight from the pre-training run's ITM head
    assert main(["eval", "--checkpoint", str(pre / "final"), *data_args, "--split", "train",
                 "kb101.queries=4", "kb101.negatives=8", "kb101.draws=1", "full_catalog=0"]) == 0
