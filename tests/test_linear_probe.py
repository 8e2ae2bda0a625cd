"""The linear reference: training on frozen features, save/load, the prior scorer, the CLI."""

import json

import numpy as np
import pytest
import torch

from kaleido.baselines.linear_probe import (LinearDualEncoder, LinearProbeConfig, ProbeEvalConfig,
                                            run_linear_probe, similarity)
from kaleido.evaluation.kb101 import KB101Config


def _split(rng, n, mix_i, mix_t, noise=0.3):
    latent = rng.normal(size=(n, 8))
    labels = [f"s{k % 4}" for k in range(n)]
    return {"image": (latent @ mix_i + noise * rng.normal(size=(n, 24))).astype(np.float32),
            "text": (latent @ mix_t + noise * rng.normal(size=(n, 16))).astype(np.float32),
            "titles": [f"title {k}" for k in range(n)], "subcategory": labels,
            "category": [f"c{k % 2}" for k in range(n)]}


def test_linear_probe_learns_a_shared_space_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    mix_i, mix_t = rng.normal(size=(8, 24)), rng.normal(size=(8, 16))
    train, test = _split(rng, 400, mix_i, mix_t), _split(rng, 60, mix_i, mix_t)
    cfg = LinearProbeConfig(dim=16, epochs=30, batch_size=64, logreg_max_iter=200)
    out = run_linear_probe(train, test, cfg, ProbeEvalConfig(kb101=KB101Config(queries=60, negatives=20, draws=2)))
    r = out["retrieval"]
    chance = 2 * 100 * (1 + 5 + 10) / 21
    assert r["SumR"] > 3 * chance and r["full_catalog"]["TIR"]["R@10"] > 0.5
    model = out["model"]
    model.save_pretrained(tmp_path / "m")
    again = LinearDualEncoder.from_pretrained(tmp_path / "m")
    assert np.allclose(similarity(model, test["image"], test["text"]), similarity(again, test["image"], test["text"]),
                       atol=1e-6)
    assert set(out["subcategory"]) == {"image", "image+title"}


def test_same_title_pairs_are_not_negatives_in_training():
    # two products share a title and their features: without the exclusion they push apart
    from kaleido.baselines.linear_probe import train_dual_encoder

    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 6)).astype(np.float32)
    image[1] = image[0]
    text = image[:, :5].copy()
    cfg = LinearProbeConfig(dim=4, epochs=200, batch_size=4, dropout=0.0, lr=1e-2)
    model, _ = train_dual_encoder(image, text, ["a", "a", "b", "c"], cfg)
    sim = similarity(model, image, text)
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]


def test_linear_probe_cli_on_the_sample_then_resumes(sample_dir, tmp_path, capsys):
    from kaleido.cli import main

    split = tmp_path / "split"
    assert main(["data", "split", str(sample_dir), "--out", str(split)]) == 0
    out = tmp_path / "lp"
    args = ["baseline", "linear-probe", "--catalog", str(sample_dir), "--split-file", str(split), "--out", str(out),
            "probe.epochs=5", "eval.kb101.negatives=10", "eval.kb101.draws=2", "features.chunk=64"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["products"]["test"] > 10 and 0 < result["retrieval"]["SumR"] <= 600
    assert (out / "model" / "model.safetensors").is_file()
    chunks = sorted((out / "features" / "train").glob("chunk-*.npz"))
    assert len(chunks) >= 2
    stamp = chunks[0].stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0                      # features come from the chunks: nothing recomputed
    assert chunks[0].stat().st_mtime_ns == stamp
    again = json.loads((out / "result.json").read_text())
    assert again["retrieval"]["SumR"] == pytest.approx(result["retrieval"]["SumR"])


def test_probe_prior_scores_pairs_as_the_reference_does(sample_dir, tmp_path):
    from kaleido.baselines.linear_probe import ProbePrior
    from kaleido.cli import main
    from kaleido.data import load_catalog, split_products

    split = tmp_path / "split"
    main(["data", "split", str(sample_dir), "--out", str(split)])
    out = tmp_path / "lp"
    assert main(["baseline", "linear-probe", "--catalog", str(sample_dir), "--split-file", str(split), "--out",
                 str(out), "probe.epochs=3", "eval.kb101.negatives=10", "eval.kb101.draws=1"]) == 0
    products = split_products(load_catalog(sample_dir), split, "test")
    prior = ProbePrior(out, products)
    n = len(products)
    full = prior.score(np.repeat(np.arange(n), n), np.tile(np.arange(n), n)).reshape(n, n)
    assert np.allclose(full, prior.scale * prior.image @ prior.text.T, atol=1e-4)
    assert np.allclose(np.diag(full), prior.score(np.arange(n), np.arange(n)))
    train = split_products(load_catalog(sample_dir), split, "train")
    with pytest.raises(ValueError, match="no whole-image feature"):
        ProbePrior(tmp_path / "lp", train[:3] + [type(train[0])(id="nope", title="x", images=())])


def test_eval_ranks_by_itm_by_the_prior_and_by_their_sum(pretrain_data, tmp_path):
    from kaleido.evaluation.evaluate import EvalConfig, evaluate_retrieval
    from kaleido.finetune import PairInputs, RetrievalConfig
    from kaleido.finetune.retrieval import RetrievalTask
    from kaleido.model import KaleidoProcessor, create_model
    from kaleido.patches.cache import FeatureCache

    products = list(pretrain_data["catalog"])
    pairs = PairInputs(products, FeatureCache(pretrain_data["cache"]), KaleidoProcessor.default(max_text_len=32))
    run = tmp_path / "prior"
    torch.manual_seed(0)
    LinearDualEncoder(1280, 384, dim=8).save_pretrained(run / "model")
    (run / "features" / "test").mkdir(parents=True)
    ids = [p.id for p in pairs.products]
    np.savez(run / "features" / "test" / "chunk-00000.npz", ids=np.array(ids), requested=np.array(ids),
             features=np.random.default_rng(0).normal(size=(len(ids), 1280)).astype(np.float32), size=np.int64(224))
    task = RetrievalTask(create_model("tiny"), RetrievalConfig()).eval()
    kb = KB101Config(queries=10, negatives=8, draws=2)

    def run_eval(weight):
        return evaluate_retrieval(task, pairs, EvalConfig(kb101=kb, full_catalog=12, prior=str(run),
                                                         prior_weight=weight))

    zero, big = run_eval(0.0), run_eval(1e6)
    assert zero["fused"]["SumR"] == pytest.approx(zero["SumR"])
    assert zero["fused"]["full_catalog"]["TIR"] == zero["full_catalog"]["TIR"]
    assert big["fused"]["SumR"] == pytest.approx(big["prior"]["SumR"])
    assert big["prior"]["SumR"] == pytest.approx(zero["prior"]["SumR"])
    assert 0.0 <= zero["itm"]["accuracy"] <= 1.0 and zero["itm"]["pairs"] == 2 * len(ids)
    # the reference scores the same ITM pairs, whatever the fusion weight
    assert zero["prior"]["itm"]["pairs"] == 2 * len(ids) and zero["prior"]["itm"] == big["prior"]["itm"]
    assert zero["prior"]["itm"]["auc"] != zero["itm"]["auc"]
