"""ITM on clean pairs with in-batch mined negatives, the ITC head, and the mean pooler."""

import numpy as np
import pytest
import torch

from kaleido.contrastive import info_nce, sample_hard_negatives, title_codes
from kaleido.model import create_model
from kaleido.pretrain.config import TaskConfig
from kaleido.pretrain.data import collate_pretrain
from kaleido.pretrain.heads import HEAD_NAMES
from kaleido.contrastive import hardest_negatives
from kaleido.pretrain.task import PretrainTask

from test_pretrain import _dataset

CLEAN = TaskConfig(itc=1.0, itm_clean=True)


def test_title_codes_fold_case_and_spaces():
    codes = title_codes(["Red Dress", " red dress", "Blue Shirt"])
    assert codes[0] == codes[1] != codes[2]


def test_info_nce_matches_hand_computed_value_and_excludes_twins():
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1.0, 0, 0]])   # text 2 is text 0's twin
    scale = torch.tensor(0.0)                                   # temperature 1
    sims = image @ text.t()
    plain = 0.5 * (torch.nn.functional.cross_entropy(sims, torch.arange(3))
                   + torch.nn.functional.cross_entropy(sims.t(), torch.arange(3)))
    assert torch.allclose(info_nce(image, text, scale), plain)
    masked = sims.clone()
    masked[0, 2] = masked[2, 0] = torch.finfo(masked.dtype).min
    expected = 0.5 * (torch.nn.functional.cross_entropy(masked, torch.arange(3))
                      + torch.nn.functional.cross_entropy(masked.t(), torch.arange(3)))
    got = info_nce(image, text, scale, torch.tensor([0, 1, 0]))
    assert torch.allclose(got, expected) and not torch.allclose(got, plain)


def test_mined_negatives_are_never_the_pair_or_a_twin():
    gen = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6)
    sim[0, 3] = 50.0                        # the most similar column of row 0 is its twin
    groups = torch.tensor([0, 1, 2, 0, 4, 5])
    for _ in range(50):
        neg = sample_hard_negatives(sim, groups, gen)
        assert (neg != torch.arange(6)).all() and neg[0] != 3 and neg[3] != 0
    hard = hardest_negatives(sim, groups)
    assert hard[0] != 3 and (hard != torch.arange(6)).all()
    sim[1, 2] = 40.0
    assert hardest_negatives(sim, groups)[1] == 2    # the hardest non-twin is taken


def test_clean_itm_pairs_are_balanced_uncorrupted_and_label_independent(pretrain_data):
    data = _dataset(pretrain_data, tasks=CLEAN)
    samples = [data[i] for i in range(8)]
    assert all("itm_labels" not in s for s in samples)      # every masked sample is a positive
    batch = collate_pretrain(samples)
    task = PretrainTask(create_model("tiny"), CLEAN).train()
    image_of, text_of, labels = task.mine_pairs(torch.randn(8, 8), batch["title_group"])
    assert labels.tolist() == [1] * 8 + [0] * 8
    assert (image_of[:8] == torch.arange(8)).all() and (text_of[:8] == torch.arange(8)).all()
    neg = slice(8, None)
    assert (batch["title_group"][image_of[neg]] != batch["title_group"][text_of[neg]]).all()
    # ITM reads the clean copies: no [MASK] token, no blanked or greyed patch, for either label
    mask_id = data.mask_id
    assert not (batch["clean_input_ids"] == mask_id).any()
    cache = data.cache
    for k, s in enumerate(samples):
        original = cache[data.products[k].id].features
        assert np.allclose(batch["clean_patch_features"][k].numpy(), original)
        assert np.array_equal(batch["clean_input_ids"][k, :len(data.text_ids[k])].numpy(), data.text_ids[k])
    # the masked view differs from the clean one (so the test above is not vacuous)
    assert (batch["input_ids"] == mask_id).any()


def test_every_head_gets_gradients_with_clean_itm_and_itc(pretrain_data):
    data = _dataset(pretrain_data, tasks=CLEAN)
    batch = collate_pretrain([data[i] for i in range(8)])
    torch.manual_seed(0)
    task = PretrainTask(create_model("tiny"), CLEAN)
    out = task(batch)
    assert {f"{n}_loss" for n in HEAD_NAMES if n != "wpa"} <= set(out)  # WPA (off by default): tests/test_wpa.py
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, head in task.heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    task.eval()
    with torch.no_grad():
        a, b = task(batch), task(batch)
    assert torch.equal(a["itm_loss"], b["itm_loss"])        # validation mines deterministically


def test_mean_pooling_is_the_masked_mean_and_differs_from_cls():
    torch.manual_seed(0)
    cls = create_model("tiny").eval()
    mean = create_model("tiny", pooling="mean").eval()
    mean.load_state_dict(cls.state_dict())
    cfg = cls.config
    ids = torch.tensor([[101, 2000, 2001, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    feats = torch.randn(1, cfg.num_patches, cfg.feature_dim)
    pos = torch.rand(1, cfg.num_patches, 5)
    with torch.no_grad():
        a, b = cls(ids, feats, pos, mask), mean(ids, feats, pos, mask)
    keep = torch.cat([mask[0].bool(), torch.ones(cfg.num_patches, dtype=torch.bool)])
    assert torch.allclose(b.pooled[0], b.last_hidden_state[0, keep].mean(0), atol=1e-6)
    assert not torch.allclose(a.pooled, b.pooled)
    with pytest.raises(ValueError, match="pooling"):
        create_model("tiny", pooling="max")


def test_retrieval_mines_its_negatives_with_itc(pretrain_data):
    from kaleido.finetune import PairInputs, RetrievalConfig
    from kaleido.finetune.retrieval import PairCollator, RetrievalDataset, RetrievalTask
    from kaleido.model import KaleidoProcessor
    from kaleido.patches.cache import FeatureCache

    pairs = PairInputs(list(pretrain_data["catalog"]), FeatureCache(pretrain_data["cache"]),
                       KaleidoProcessor.default(max_text_len=32))
    cfg = RetrievalConfig(mining="itc", text_negatives=2, image_negatives=1)
    data = RetrievalDataset(pairs, cfg)
    assert data[3]["images"].tolist() == data[3]["texts"].tolist() == [3]   # true pairs only
    batch = PairCollator(pairs)([data[i] for i in range(6)])
    torch.manual_seed(0)
    task = RetrievalTask(create_model("tiny"), cfg).train()
    seen = []
    real_score = task.score
    task.score = lambda b: seen.append(b["input_ids"].shape[0]) or real_score(b)
    out = task(batch)
    assert seen == [6 * 4]                                # 1 true + 2 texts + 1 image per product
    assert {"itc_loss", "itc_acc", "retrieval_loss"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is not None for p in task.itc.parameters())
    with pytest.raises(ValueError, match="mining"):
        RetrievalConfig(mining="nearest")
