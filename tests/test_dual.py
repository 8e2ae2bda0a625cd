"""The dual encoder: multi-view InfoNCE on hand-computed values (same-title and same-tag
exclusion), the augmentations, both towers forward/backward, the text tower's learning-rate
scale, save/load, zero-shot probabilities, and the 2-process gather under torchrun."""

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kaleido.training import param_groups

from kaleido.config import load_config
from kaleido.data import Product
from kaleido.dual import (AugmentConfig, DualCollator, DualDataset, DualLossConfig, DualRunConfig,
                          MultiViewInfoNCE, attribute_text, build_dual_task, label_embeddings, load_dual,
                          zero_shot_predict, zero_shot_probabilities)
from kaleido.dual.augment import feature_noise, image_view, level_drop, patch_dropout
from kaleido.dual.run import fit_to_cache
from kaleido.patches.cache import FeatureCache

REPO = Path(__file__).resolve().parents[1]


def _tiny(*overrides) -> DualRunConfig:
    return load_config(DualRunConfig, "tiny", list(overrides), component="dual")


@pytest.fixture(scope="module")
def cache(pretrain_data):
    return FeatureCache(pretrain_data["cache"])


def _batch(task, products, cache, n=6, augment=AugmentConfig()):
    data = DualDataset(products[:n], cache, task.processor, augment, 2, seed=0)
    return DualCollator(task.processor, task.cfg)([data[i] for i in range(len(data))])


# ------------------------------------------------------------------- the loss, by hand

I = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8)]
T = [(0.8, 0.6), (0.0, 1.0), (1.0, 0.0)]


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1]


def _hand_info_nce(images, texts, scale, excluded=()):
    """Symmetric InfoNCE written out with math.exp/log; ``excluded`` = pairs (i, j) left out."""
    n = len(images)
    logit = [[scale * _dot(images[i], texts[j]) for j in range(n)] for i in range(n)]
    i2t = [-logit[i][i] + math.log(sum(math.exp(logit[i][j]) for j in range(n) if (i, j) not in excluded))
           for i in range(n)]
    t2i = [-logit[j][j] + math.log(sum(math.exp(logit[i][j]) for i in range(n) if (i, j) not in excluded))
           for j in range(n)]
    return 0.5 * (sum(i2t) / n + sum(t2i) / n)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_pair_loss_matches_the_hand_computed_value_with_same_title_products_excluded():
    scale = torch.tensor(2.0)
    loss = MultiViewInfoNCE(DualLossConfig())
    titles = torch.tensor([5, 7, 5])                         # products 0 and 2 share their title
    out = loss([_t(I)], [_t(T)], scale, [titles], ["title"])
    twins = {(0, 2), (2, 0)}
    assert out["contrastive_loss"].item() == pytest.approx(_hand_info_nce(I, T, 2.0, twins), rel=1e-6)
    plain = loss([_t(I)], [_t(T)], scale, [None], ["title"])["contrastive_loss"].item()
    assert plain == pytest.approx(_hand_info_nce(I, T, 2.0), rel=1e-6)
    assert abs(plain - out["contrastive_loss"].item()) > 1e-3  # the exclusion changes the value
    # in-batch R@1: the best text of image 0 is text 2 and that of image 2 is text 0: misses,
    # unless a same-title twin counts as a hit
    assert out["i2t_r1"].item() == pytest.approx(1.0)
    assert loss([_t(I)], [_t(T)], scale, [None])["i2t_r1"].item() == pytest.approx(1 / 3)


def test_multi_view_loss_is_the_mean_over_all_four_cross_modal_pairs():
    scale = torch.tensor(3.0)
    i_b = [(0.0, 1.0), (1.0, 0.0), (0.8, 0.6)]
    t_b = [(0.6, 0.8), (0.6, -0.8), (0.0, 1.0)]
    titles = torch.tensor([0, 1, 2])
    tags = torch.stack([titles, torch.tensor([3, 4, 3])], 1)  # tag view: 0 and 2 share a tag text
    out = MultiViewInfoNCE(DualLossConfig())([_t(I), _t(i_b)], [_t(T), _t(t_b)], scale, [titles, tags],
                                             ["title", "attributes"])
    twins = {(0, 2), (2, 0)}
    expected = {"image_a_title_loss": _hand_info_nce(I, T, 3.0), "image_b_title_loss": _hand_info_nce(i_b, T, 3.0),
                "image_a_attributes_loss": _hand_info_nce(I, t_b, 3.0, twins),
                "image_b_attributes_loss": _hand_info_nce(i_b, t_b, 3.0, twins)}
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-6), key
    assert out["contrastive_loss"].item() == pytest.approx(sum(expected.values()) / 4, rel=1e-6)
    intra = MultiViewInfoNCE(DualLossConfig(intra_weight=0.5))([_t(I), _t(i_b)], [_t(T)], scale, [titles])
    assert intra["intra_loss"].item() == pytest.approx(_hand_info_nce(I, i_b, 3.0), rel=1e-6)
    assert intra["contrastive_loss"].item() == pytest.approx(
        (_hand_info_nce(I, T, 3.0) + _hand_info_nce(i_b, T, 3.0)) / 2 + 0.5 * _hand_info_nce(I, i_b, 3.0), rel=1e-6)


def test_loss_config_rejects_unknown_views():
    with pytest.raises(ValueError, match="text_views"):
        DualLossConfig(text_views=["title", "colour"])
    with pytest.raises(ValueError, match="image_views"):
        DualLossConfig(image_views=3)


# ------------------------------------------------------------------ views and texts

def test_augmentations_hide_patches_never_all_and_are_seeded():
    grids, rng = [1, 2, 3, 4, 5], np.random.default_rng(0)
    full = np.ones(55, dtype=bool)
    for _ in range(20):
        assert patch_dropout(full, 0.999, rng).sum() >= 1
    dropped = level_drop(full, grids, 1.0, rng)
    assert (~dropped).sum() in {g * g for g in grids}        # exactly one whole level hidden
    one = np.zeros(55, dtype=bool)
    one[3] = True                                            # the last visible patch is never hidden
    assert all(level_drop(one, grids, 1.0, np.random.default_rng(seed)).any() for seed in range(10))
    x = np.random.default_rng(2).normal(size=(55, 8)).astype(np.float32)
    assert np.array_equal(feature_noise(x, 0.0, rng), x)
    noisy = feature_noise(x, 0.1, np.random.default_rng(3))
    assert 0.05 < (noisy - x).std() / x.std() < 0.15
    a = image_view(x, grids, AugmentConfig(), np.random.default_rng([1, 2, 3]))
    b = image_view(x, grids, AugmentConfig(), np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    clean = image_view(x, grids, AugmentConfig(enabled=False), rng)
    assert np.array_equal(clean[0], x) and clean[1].all()


def test_attribute_text_uses_the_template_and_skips_missing_fields():
    p = Product(id="1", title="Puma Men Black Polo Tshirts", images=(), category="Topwear", subcategory="Tshirts",
                attributes={"baseColour": "Black", "gender": "Men", "usage": "Casual", "season": "nan"})
    assert attribute_text(p) == "Black Men Casual Tshirts"
    assert attribute_text(p, "{category}: {baseColour} {missing}") == "Topwear: Black"


def test_dataset_items_and_batches(pretrain_data, cache):
    task = build_dual_task(fit_to_cache(_tiny(), cache))
    products = list(pretrain_data["catalog"])
    data = DualDataset(products, cache, task.processor, AugmentConfig(patch_dropout=0.5), 2, seed=0)
    item = data[3]
    assert item["patch_features_a"].shape == (55, 32) and item["patch_mask_a"].dtype == bool
    assert not np.array_equal(item["patch_mask_a"], item["patch_mask_b"])    # two different views
    data.set_epoch(1)
    assert not np.array_equal(data[3]["patch_mask_a"], item["patch_mask_a"])  # new views each epoch
    data.set_epoch(0)
    assert np.array_equal(data[3]["patch_mask_a"], item["patch_mask_a"])      # seeded
    batch = DualCollator(task.processor, task.cfg)([data[i] for i in range(4)])
    assert batch["patch_features_b"].shape == (4, 55, 32) and batch["title_groups"].shape == (4, 1)
    assert batch["attributes_groups"].shape == (4, 2)
    tok = task.processor.tokenizer
    assert tok.decode(batch["attributes_input_ids"][0], skip_special_tokens=True) == \
        attribute_text(products[0]).lower()


# ------------------------------------------------------------------------ the towers

@pytest.mark.parametrize("overrides", [[], ["model.image.pooling=attention"], ["model.image.tower=pooled"]])
def test_forward_and_backward_through_both_towers(pretrain_data, cache, overrides):
    torch.manual_seed(0)
    task = build_dual_task(fit_to_cache(_tiny(*overrides), cache))
    batch = _batch(task, list(pretrain_data["catalog"]), cache)
    out = task(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    for key in ("image_a_title_loss", "image_b_attributes_loss", "i2t_r1", "temperature"):
        assert key in out
    out["loss"].backward()
    missing = [n for n, p in task.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing
    emb = task.model.encode_image(batch["patch_features_a"], batch["patch_positions"], batch["patch_mask_a"])
    assert emb.shape == (6, 16) and torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)


@pytest.fixture(scope="module")
def whole_cache(pretrain_data, cache, tmp_path_factory):
    """The fixture cache plus a 24-d whole-image feature for all but its last product."""
    from kaleido.patches.cache import write_union

    root = tmp_path_factory.mktemp("whole")
    ids = cache.ids[:-1]
    (root / "features").mkdir()
    np.savez(root / "features" / "chunk-00000.npz", ids=np.array(ids), requested=np.array(ids), size=np.int64(224),
             features=np.random.default_rng(0).normal(size=(len(ids), 24)).astype(np.float32))
    return write_union(root / "union", [pretrain_data["cache"]], whole_image=[root / "features"])


@pytest.mark.parametrize("tower", ["transformer", "pooled"])
def test_the_whole_image_feature_reaches_the_embedding(pretrain_data, whole_cache, tower, tmp_path):
    from kaleido.dual.encode import embed_products

    assert whole_cache.whole_image_dim == 24 and whole_cache[whole_cache.ids[0]].whole_image.shape == (24,)
    assert whole_cache[whole_cache.ids[-1]].whole_image is None
    torch.manual_seed(0)
    cfg = fit_to_cache(_tiny(f"model.image.tower={tower}", "model.image.whole_image=true"), whole_cache)
    assert cfg.model.image.whole_image_dim == 24
    task = build_dual_task(cfg)
    products = list(pretrain_data["catalog"])
    data = DualDataset(products, whole_cache, task.processor, AugmentConfig(), 2, seed=0)
    assert len(data) == len(products) - 1                 # the product without one is left out
    batch = DualCollator(task.processor, task.cfg)([data[i] for i in range(4)])
    assert batch["whole_image"].shape == (4, 24)
    task(batch)["loss"].backward()
    assert task.model.image.whole_norm.weight.grad.abs().sum() > 0
    task.eval().save_pretrained(tmp_path / "m")
    model, processor = load_dual(tmp_path / "m")
    assert processor.whole_image
    ids = whole_cache.ids[:3]
    emb = embed_products(model, processor, whole_cache, ids)
    item = whole_cache[ids[0]]
    other = embed_products(model, processor, {ids[0]: dataclasses.replace(item, whole_image=item.whole_image[::-1].copy())},
                           ids[:1])
    assert not np.allclose(emb[0], other[0], atol=1e-4)   # the embedding reads the whole-image feature
    with pytest.raises(ValueError, match="whole-image feature"):
        embed_products(model, processor, whole_cache, whole_cache.ids[-1:])
    with pytest.raises(ValueError, match="whole-image"):
        fit_to_cache(_tiny("model.image.whole_image=true"), FeatureCache(pretrain_data["cache"]))


def test_hidden_patches_do_not_change_the_embedding(pretrain_data, cache):
    torch.manual_seed(0)
    task = build_dual_task(fit_to_cache(_tiny(), cache)).eval()
    batch = _batch(task, list(pretrain_data["catalog"]), cache, n=2)
    mask = torch.ones(2, 55, dtype=torch.bool)
    mask[:, 30:] = False
    x = batch["patch_features_a"]
    y = x.clone()
    y[:, 30:] = 100.0                                        # garbage under the hidden patches
    with torch.no_grad():
        a = task.model.encode_image(x, batch["patch_positions"], mask)
        b = task.model.encode_image(y, batch["patch_positions"], mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_text_lr_scale_moves_the_text_tower_that_much_less(pretrain_data, cache):
    def step(scale):
        torch.manual_seed(0)
        task = build_dual_task(fit_to_cache(_tiny(f"model.text.lr_scale={scale}"), cache)).eval()
        before = task.model.text.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
        opt = torch.optim.AdamW(param_groups(task, 0.0, lr=1e-2), lr=1e-2)   # the shared loop's groups
        batch = _batch(task, list(pretrain_data["catalog"]), cache, augment=AugmentConfig(enabled=False))
        task(batch)["loss"].backward()
        opt.step()
        after = task.model.text.bert.encoder.layer[0].attention.self.query.weight.detach()
        return (after - before).abs()

    full, quarter = step(1.0), step(0.25)
    moved = full > 1e-4                                      # Adam's first step: about lr per entry
    assert moved.float().mean() > 0.5
    ratio = quarter[moved] / full[moved]
    assert ratio.median().item() == pytest.approx(0.25, rel=0.02)
    assert ((ratio - 0.25).abs() < 0.025).float().mean() > 0.9  # (AdamW's eps bends the tiniest gradients)


def test_a_frozen_text_body_is_computed_once_and_gives_the_same_loss(pretrain_data, cache):
    torch.manual_seed(0)
    task = build_dual_task(fit_to_cache(_tiny("model.text.freeze=true"), cache)).train()
    assert not task.model.text.training                     # frozen: no dropout, so cached states hold
    products, clean = list(pretrain_data["catalog"])[:6], AugmentConfig(enabled=False)
    plain = DualDataset(products, cache, task.processor, clean, 2, seed=0)
    cached = DualDataset(products, cache, task.processor, clean, 2, seed=0)
    cached.cache_text_states(task)
    collate = DualCollator(task.processor, task.cfg)
    by_ids, by_states = collate([plain[i] for i in range(6)]), collate([cached[i] for i in range(6)])
    assert "title_states" in by_states and "title_input_ids" not in by_states
    task.eval()  # the image tower's dropout off: both batches see the same model
    assert task(by_states)["loss"].item() == pytest.approx(task(by_ids)["loss"].item(), rel=1e-5)
    task(by_states)["loss"].backward()
    assert all(p.grad is None for p in task.model.text.parameters())
    assert task.model.text_proj.weight.grad is not None
    with pytest.raises(ValueError, match="frozen"):
        build_dual_task(fit_to_cache(_tiny(), cache)).text_states(plain.title_ids)


def test_save_and_load_give_identical_embeddings(pretrain_data, cache, tmp_path):
    torch.manual_seed(0)
    task = build_dual_task(fit_to_cache(_tiny(), cache))
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(task, list(pretrain_data["catalog"]), cache)
    task(batch)["loss"].backward()
    opt.step()                                                           # a trained, non-initial state
    task.eval()
    task.save_pretrained(tmp_path / "m")
    model, processor = load_dual(tmp_path / "m")
    assert processor.grids == task.processor.grids and processor.max_text_len == task.processor.max_text_len
    with torch.no_grad():
        args = (batch["patch_features_a"], batch["patch_positions"], batch["patch_mask_a"])
        text = (batch["title_input_ids"], batch["title_attention_mask"])
        assert torch.equal(task.model.encode_image(*args), model.encode_image(*args))
        assert torch.equal(task.model.encode_text(*text), model.encode_text(*text))
        assert torch.equal(task.model.scale(), model.scale())


# --------------------------------------------------------------------------- zero-shot

def test_zero_shot_probabilities_sum_to_one_and_pick_the_right_label(pretrain_data, cache):
    torch.manual_seed(0)
    task = build_dual_task(fit_to_cache(_tiny(), cache)).eval()
    model, processor = task.model, task.processor
    labels = ["Topwear", "Shoes", "Watches", "Bags"]
    # images built to lie on the labels' prompt embeddings, in another order
    images = label_embeddings(model, processor, labels)[[2, 0, 3, 1, 2]]
    probs = zero_shot_probabilities(model, processor, images, labels)
    assert probs.shape == (5, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-6)
    assert probs.argmax(1).tolist() == [2, 0, 3, 1, 2]
    sharp = zero_shot_probabilities(model, processor, images, labels, temperature=0.001)
    assert (sharp.max(1) > 0.99).all()
    products = list(pretrain_data["catalog"])[:8]
    out = zero_shot_predict(model, processor, cache, products, ["category", "baseColour"])
    names = sorted({p.category for p in products})
    assert out["category"]["labels"] == names and out["category"]["probabilities"].shape == (8, len(names))
    assert out["category"]["known"] == 8 and 0.0 <= out["category"]["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="label"):
        label_embeddings(model, processor, labels, prompts=["no placeholder"])


# ----------------------------------------------------------------------------- torchrun

def test_torchrun_gather_equals_one_process_on_the_concatenated_batch(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from ddp_dual_gather import WORLD, inputs, loss_and_grads

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
         str(REPO / "tests" / "ddp_dual_gather.py"), str(tmp_path)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = loss_and_grads(*inputs(), gather=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # each process's loss is over its own rows: their mean is the one-process loss
    assert sum(r["loss"] for r in ranks) / WORLD == pytest.approx(single["loss"], rel=1e-5)
    b = len(ranks[0]["grads"][0])
    for r, rank in enumerate(ranks):
        for got, want in zip(rank["grads"], single["grads"]):
            # gradients from the other process's rows came back through the gather: summed over
            # processes, then averaged by DDP, they are the one-process gradient
            assert torch.allclose(got / WORLD, want[r * b:(r + 1) * b], atol=1e-6)
    # the same loss inside the training loop, under DDP: both processes end with the same weights
    p0, p1 = (torch.load(tmp_path / f"train_rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
