"""Align before fuse with a first stage: the mined pools (never the product itself nor a
same-title twin), ITM fine-tuning on them, and the evaluation that scores only the re-ranked
pairs and fuses the first stage's logit with ITM."""

import dataclasses

import numpy as np
import pytest
import torch

from kaleido.evaluation.kb101 import title_codes
from kaleido.first_stage import FirstStage, load_first_stage


def _stage(n=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return FirstStage(unit(rng.normal(size=(n, dim))).astype(np.float32),
                      unit(rng.normal(size=(n, dim))).astype(np.float32), scale=20.0)


def test_pool_is_the_most_similar_others_and_never_a_twin():
    stage = _stage()
    titles = [f"t{i}" for i in range(40)]
    titles[3] = titles[7] = titles[11] = "twin"            # three products share a title
    for direction, (q, o) in {"texts": (stage.image, stage.text), "images": (stage.text, stage.image)}.items():
        index, logits = stage.pool(5, titles, direction, chunk=7)   # chunks smaller than N
        sim = 20.0 * q @ o.T
        groups = title_codes(titles)
        for i in range(40):
            allowed = [j for j in range(40) if groups[j] != groups[i]]
            best = sorted(allowed, key=lambda j: -sim[i, j])[:5]
            assert index[i].tolist() == best
            assert np.allclose(logits[i], sim[i, best], atol=1e-5)
        assert not set(index[3]) & {3, 7, 11} and not set(index[7]) & {3, 7, 11}
    assert np.allclose(stage.score([1, 2], [3, 4]), 20.0 * (stage.image[[1, 2]] * stage.text[[3, 4]]).sum(1))


def test_pool_pads_a_row_with_too_few_eligible_products():
    stage = _stage(n=4)
    index, logits = stage.pool(10, ["a", "a", "a", "b"], "texts")
    assert index.shape == (4, 3)                           # capped at N - 1
    assert index[0, 0] == 3 and np.isinf(logits[0, 1:]).all()  # only product 3 is eligible for 0
    assert index[0].tolist() == [3, 3, 3]                  # padded with it, never with 0 or a twin
    assert set(index[3]) == {0, 1, 2}


def test_a_sharp_softmax_still_gives_distinct_negatives():
    """Logits far apart at a low temperature underflow to zero weights; sampling must not fail."""
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalDataset

    data = RetrievalDataset.__new__(RetrievalDataset)
    data.cfg = RetrievalConfig(mining="first_stage", first_stage="x", mining_temperature=0.5)
    data.mined = {"texts": (np.array([[5, 7, 9]]), np.array([[100.0, 20.0, -10.0]], dtype=np.float32))}
    picked = data._mined(0, 2, "texts", np.random.default_rng(0))
    assert picked == [5, 7]                                # the best, then the pool's next best


def test_load_first_stage_reads_a_dual_encoder_and_refuses_other_folders(dual_dir, products, cache, tmp_path):
    from kaleido.dual.evaluate import DualScores

    stage = load_first_stage(dual_dir, products, cache)
    dual = DualScores(dual_dir, products, cache)
    assert stage.scale == pytest.approx(dual.scale) and stage.scale > 1
    assert np.allclose(stage.score([0, 1, 2], [2, 1, 0]), dual.scale * dual.score([0, 1, 2], [2, 1, 0]), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="neither a dual encoder"):
        load_first_stage(tmp_path, products, cache)
    with pytest.raises(ValueError, match="feature cache"):
        load_first_stage(dual_dir, products, None)


def test_mined_negatives_come_from_the_pool_in_softmax_proportion(dual_dir, products, cache, pretrain_data):
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalDataset
    from kaleido.model import KaleidoProcessor

    pairs = PairInputs(products, cache, KaleidoProcessor.default(32, grids=cache.meta["grids"]))
    cfg = RetrievalConfig(mining="first_stage", first_stage=str(dual_dir), mining_pool=4, text_negatives=2,
                          image_negatives=1)
    data = RetrievalDataset(pairs, cfg, seed=0)
    groups = title_codes([p.title for p in pairs.products])
    index_t, _ = data.mined["texts"]
    index_i, _ = data.mined["images"]
    for i in range(len(data)):
        item = data[i]
        assert item["images"][0] == item["texts"][0] == i
        negative_texts, negative_images = item["texts"][1:3], item["images"][3:]
        assert set(negative_texts) <= set(index_t[i]) and set(negative_images) <= set(index_i[i])
        assert len(set(negative_texts)) == 2                 # distinct where the pool allows
        assert all(groups[j] != groups[i] for j in list(negative_texts) + list(negative_images))
    assert np.array_equal(data[5]["texts"], data[5]["texts"])  # seeded per (seed, epoch, item)
    # a very low temperature always takes the pool's top candidates
    cold = RetrievalDataset(pairs, RetrievalConfig(mining="first_stage", first_stage=str(dual_dir), mining_pool=4,
                                                   text_negatives=1, image_negatives=1, mining_temperature=1e-6), 0)
    assert all(cold[i]["texts"][1] == index_t[i][0] and cold[i]["images"][2] == index_i[i][0]
               for i in range(len(cold)))
    with pytest.raises(ValueError, match="first_stage=PATH"):
        RetrievalConfig(mining="first_stage")


def test_encoder_lr_scale_gives_the_pretrained_layers_their_own_rate():
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
    from kaleido.model import create_model
    from kaleido.training.loop import param_groups

    task = RetrievalTask(create_model("tiny"), RetrievalConfig(encoder_lr_scale=0.25))
    groups = param_groups(task, 0.01, lr=1e-3)
    scaled = {id(p) for g in groups if g.get("lr") == pytest.approx(2.5e-4) for p in g["params"]}
    names = {n for n, p in task.named_parameters() if id(p) in scaled}
    assert names and all(n.startswith(("model.encoder.", "model.embeddings.")) for n in names)
    assert any(n.startswith("model.patch_embeddings.") for n, p in task.named_parameters() if id(p) not in scaled)


def test_eval_without_exhaustive_scores_only_the_reranked_pairs(dual_dir, reranker_dir, products, cache):
    from kaleido.evaluation.evaluate import EvalConfig, evaluate_retrieval, retrieval_task
    from kaleido.evaluation.kb101 import KB101Config
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.run import load_processor

    pairs = PairInputs(products, cache, load_processor(reranker_dir, 64, cache.meta["grids"]))
    task = retrieval_task(reranker_dir)
    kb = KB101Config(queries=10, negatives=8, draws=2)
    n, k = len(pairs), 3

    def run(**kw):
        return evaluate_retrieval(task, pairs, EvalConfig(kb101=kb, full_catalog=n, dual=str(dual_dir), rerank_k=k,
                                                          **kw), cache)

    full = run(fusion_weights=[0.0, 1e6])
    fast = run(fusion_weights=[0.0, 1e6], exhaustive=False)
    assert "ITR" not in fast and "ITR" in full                     # no single-stream-only rows
    itm_pairs = fast["itm"]["pairs"]
    # each query's k re-ranked pairs (2 directions x draws, full catalog), plus the ITM-accuracy pairs
    bound = 2 * kb.draws * min(kb.queries, n) * k + 2 * n * k + itm_pairs
    assert fast["pairs_scored"] <= bound < full["pairs_scored"]
    for key in ("dual", "two_stage"):
        assert fast[key]["SumR"] == pytest.approx(full[key]["SumR"])
        assert fast[key]["full_catalog"]["TIR"] == full[key]["full_catalog"]["TIR"]
    fused = fast["two_stage_fused"]
    # weight 0 keeps the first stage's order; a huge weight is ITM's order within the top k
    assert fused[0.0]["SumR"] == pytest.approx(fast["dual"]["SumR"])
    assert fused[0.0]["full_catalog"]["ITR"] == fast["dual"]["full_catalog"]["ITR"]
    assert fused[1e6]["SumR"] == pytest.approx(fast["two_stage"]["SumR"])
    # the ITM pairs scored by each matcher: weight 0 is the first stage's, a huge weight ITM's
    assert fused[0.0]["itm"]["auc"] == pytest.approx(fast["dual"]["itm"]["auc"])
    # (up to ITM's ties, which count half alone and which the first stage breaks in the fusion)
    assert fused[1e6]["itm"]["auc"] == pytest.approx(fast["itm"]["auc"], abs=0.01)
    with pytest.raises(ValueError, match="dual=PATH"):
        evaluate_retrieval(task, pairs, EvalConfig(kb101=kb, exhaustive=False), cache)


@pytest.mark.parametrize("pooling,interaction", [("mean", "product"), ("cls", "product"),
                                                 ("mean", "bilinear"), ("cls", "bilinear")])
def test_interaction_itm_head_is_scored_alike_by_the_fast_scorer(pooling, interaction, products, cache):
    from kaleido.evaluation.scorer import PairScorer
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
    from kaleido.model import KaleidoProcessor, create_model

    torch.manual_seed(0)
    task = RetrievalTask(create_model("tiny", pooling=pooling), RetrievalConfig(itm_interaction=interaction)).eval()
    with torch.no_grad():
        for p in task.itm.interaction.parameters():
            p.normal_(std=1.0)                                   # make the term matter
    pairs = PairInputs(products, cache, KaleidoProcessor.default(32, grids=cache.meta["grids"]))
    images, texts = np.array([0, 1, 2, 3, 0]), np.array([0, 2, 1, 3, 3])
    with torch.no_grad():
        direct = task.score(pairs.batch(images, texts)).numpy()
        text_only = task.itm.classifier(task.model(**{k: v for k, v in pairs.batch(images, texts).items()
                                                       if k != "patch_positions"},
                                                    patch_positions=pairs.batch(images, texts)["patch_positions"]
                                                    ).pooled)
    fast = PairScorer(task, pairs).score(images, texts)
    assert np.allclose(fast, direct, atol=1e-4)
    assert not np.allclose((text_only[:, 1] - text_only[:, 0]).numpy(), direct, atol=1e-3)  # the term counts


def test_bilinear_interaction_starts_as_no_interaction_and_learns_a_match_the_additive_head_cannot(products, cache):
    """At step 0 the bilinear term is zero (the head scores as one without it); on groups of
    1 true pair + negatives sharing its image or its text, the additive head's softmax loss
    cannot leave ln G, while the bilinear term separates the true pairs."""
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
    from kaleido.model import KaleidoProcessor, create_model
    from kaleido.model.modeling import KaleidoBertOutput

    torch.manual_seed(0)
    plain = RetrievalTask(create_model("tiny"), RetrievalConfig())
    torch.manual_seed(0)
    bilinear = RetrievalTask(create_model("tiny"), RetrievalConfig(itm_interaction="bilinear"))
    bilinear.itm.classifier.load_state_dict(plain.itm.classifier.state_dict())
    bilinear.model.load_state_dict(plain.model.state_dict())
    pairs = PairInputs(products, cache, KaleidoProcessor.default(32, grids=cache.meta["grids"]))
    batch = pairs.batch([0, 1, 2, 0], [0, 1, 0, 2])
    plain.eval(), bilinear.eval()
    with torch.no_grad():
        assert torch.allclose(plain.score(batch), bilinear.score(batch))

    # frozen states of 8 products: text and image parts that match only through an interaction
    g = torch.Generator().manual_seed(1)
    text, image = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    head_cfg = dataclasses.replace(create_model("tiny").config, hidden_size=32, num_attention_heads=2)

    def groups(itm):
        rows = []
        for i in range(8):  # true pair, then its image with 2 other texts, its text with 2 other images
            others = [(i + 1) % 8, (i + 2) % 8]
            rows += [(i, i)] + [(i, j) for j in others] + [(j, i) for j in others]
        im, tx = zip(*rows)
        im, tx = torch.tensor(im), torch.tensor(tx)
        hidden = torch.cat([text[tx][:, None], image[im][:, None]], 1)   # (N, 2, H): 1 token, 1 patch
        out = KaleidoBertOutput(last_hidden_state=hidden, pooled=text[tx] + image[im], text_length=1)
        logits = itm.logits(out)
        return torch.nn.functional.cross_entropy((logits[:, 1] - logits[:, 0]).view(8, 5),
                                                 torch.zeros(8, dtype=torch.long))

    from kaleido.pretrain.heads import ITMHead
    losses = {}
    for kind in ("none", "bilinear"):
        torch.manual_seed(0)
        itm = ITMHead(head_cfg, interaction=kind)
        opt = torch.optim.Adam(itm.parameters(), lr=0.05)
        for _ in range(150):
            opt.zero_grad()
            loss = groups(itm)
            loss.backward()
            opt.step()
        losses[kind] = loss.item()
    assert losses["none"] == pytest.approx(np.log(5), abs=0.02)   # additive: no gradient out of ln G
    assert losses["bilinear"] < 0.2


def test_residual_retrieval_adds_the_first_stage_logit_to_every_pair(dual_dir, products, cache):
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.retrieval import PairCollator, RetrievalConfig, RetrievalDataset, RetrievalTask
    from kaleido.model import KaleidoProcessor, create_model

    pairs = PairInputs(products, cache, KaleidoProcessor.default(32, grids=cache.meta["grids"]))
    cfg = RetrievalConfig(mining="first_stage", first_stage=str(dual_dir), mining_pool=4, residual=True)
    data = RetrievalDataset(pairs, cfg, seed=0)
    stage = load_first_stage(dual_dir, pairs.products, cache)
    items = [data[i] for i in range(3)]
    for it in items:
        assert np.allclose(it["prior"], stage.score(it["images"], it["texts"]), atol=1e-5)
    batch = PairCollator(pairs)(items)
    torch.manual_seed(0)
    task = RetrievalTask(create_model("tiny"), cfg).eval()
    with torch.no_grad():
        out = task(batch)
        scores = (task.score(batch) + batch["prior"]).view(3, -1)
    expected = torch.nn.functional.cross_entropy(scores, torch.zeros(3, dtype=torch.long))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # without the prior the loss differs (the term counts), and the config refuses a residual with no first stage
    plain = RetrievalTask(task.model, RetrievalConfig(mining="first_stage", first_stage=str(dual_dir)))
    plain.itm.load_state_dict(task.itm.state_dict())
    with torch.no_grad():
        assert plain.eval()(batch)["loss"].item() != pytest.approx(expected.item(), rel=1e-3)
    with pytest.raises(ValueError, match="residual"):
        RetrievalConfig(residual=True)
    with pytest.raises(ValueError, match="itm_interaction"):
        RetrievalConfig(itm_interaction="outer")
    assert RetrievalConfig(itm_interaction=True).itm_interaction == "product"


def test_mining_random_mixes_any_product_negatives_into_the_mined_ones(dual_dir, products, cache):
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalDataset

    pairs = PairInputs(products, cache, _processor(cache))
    base = dict(mining="first_stage", first_stage=str(dual_dir), mining_pool=2, text_negatives=3, image_negatives=3)
    mined = RetrievalDataset(pairs, RetrievalConfig(**base), seed=0)
    mixed = RetrievalDataset(pairs, RetrievalConfig(**base, mining_random=1.0), seed=0)
    groups = title_codes([p.title for p in pairs.products])
    pool = set(range(len(pairs)))
    outside = 0
    for i in range(len(pairs)):
        m, x = mined[i], mixed[i]
        assert set(m["texts"][1:4]) <= set(mined.mined["texts"][0][i])     # pool of 2: only those
        negatives = list(x["texts"][1:4]) + list(x["images"][4:])
        assert all(j in pool and j != i and groups[j] != groups[i] for j in negatives)
        outside += sum(j not in set(mined.mined["texts"][0][i]) for j in x["texts"][1:4])
    assert outside > 0                                                    # random ones leave the pool
    with pytest.raises(ValueError, match="mining_random"):
        RetrievalConfig(**base, mining_random=1.5)


def _processor(cache):
    from kaleido.model import KaleidoProcessor

    return KaleidoProcessor.default(32, grids=cache.meta["grids"])
