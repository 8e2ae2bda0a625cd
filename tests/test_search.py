"""The product index and the search engine: round trip, resumable build, incremental add,
exact vs approximate, filters, two-stage re-ranking, and the CLI end to end."""

import csv
import json

import numpy as np
import pytest
import torch

from kaleido.cli import main
from kaleido.config import load_config
from kaleido.dual import DualRunConfig, build_dual_task, embed_products, embed_texts, load_dual
from kaleido.dual.run import fit_to_cache
from kaleido.search import IndexConfig, ProductIndex, SearchEngine, add_products, build_index
from kaleido.search import build as build_module

QUERIES = ["red shirt", "black shoes for men", "blue skirt", "watch"]


def _queries(dual_dir):
    model, processor = load_dual(dual_dir)
    return embed_texts(model, processor, QUERIES)


def test_index_round_trip_gives_the_same_results(dual_dir, products, cache, tmp_path, pretrain_data):
    index = build_index(dual_dir, products, cache, tmp_path / "idx", IndexConfig(chunk_size=10), progress=False,
                        image_store=pretrain_data["catalog"].store)
    assert index.kind == "flat" and len(index) == len(products)
    assert not (tmp_path / "idx" / "chunks").exists()           # chunks are removed once the index is whole
    model, processor = load_dual(dual_dir)
    direct = embed_products(model, processor, cache, [p.id for p in products])
    assert np.allclose(index.embeddings, direct, atol=1e-6)
    loaded = ProductIndex.load(tmp_path / "idx")
    q = _queries(dual_dir)
    s1, r1 = index.search(q, 5)
    s2, r2 = loaded.search(q, 5)
    assert np.array_equal(r1, r2) and np.allclose(s1, s2)
    assert np.allclose(s1[:, 0], (q @ direct.T).max(1), atol=1e-5)  # exact: the true best product
    assert loaded.metadata["id"].tolist() == [p.id for p in products]
    rec = loaded.product(0)
    assert rec["title"] == products[0].title and rec["attributes"] == products[0].attributes
    assert rec["image"].endswith(products[0].images[0]) and loaded.info["model"] == str(dual_dir.resolve())


def test_a_killed_build_resumes_from_its_chunks(dual_dir, products, cache, tmp_path, monkeypatch):
    cfg = IndexConfig(chunk_size=5)
    calls = []
    real = build_module._embed

    def dying(encoder, processor, cache_, chunk, cfg_):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(encoder, processor, cache_, chunk, cfg_)

    monkeypatch.setattr(build_module, "_embed", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index(dual_dir, products, cache, tmp_path / "idx", cfg, progress=False)
    assert len(list((tmp_path / "idx" / "chunks").glob("chunk-*.npz"))) == 2
    calls.clear()
    monkeypatch.setattr(build_module, "_embed", lambda *a: calls.append(len(a[3])) or real(*a))
    resumed = build_index(dual_dir, products, cache, tmp_path / "idx", cfg, progress=False)
    assert sum(calls) == len(products) - 10                     # only the chunks that were missing
    whole = build_index(dual_dir, products, cache, tmp_path / "whole", cfg, progress=False)
    assert np.array_equal(resumed.embeddings, whole.embeddings)
    calls.clear()
    again = build_index(dual_dir, products, cache, tmp_path / "idx", IndexConfig(kind="hnsw"), progress=False)
    assert calls == [] and again.kind == "hnsw"                 # same model and products: embeddings reused


def test_incremental_add_equals_a_full_build(dual_dir, products, cache, tmp_path):
    full = build_index(dual_dir, products, cache, tmp_path / "full", progress=False)
    build_index(dual_dir, products[:14], cache, tmp_path / "part", progress=False)
    index, added = add_products(tmp_path / "part", products[10:], progress=False)  # 10..13 are already in
    assert added == len(products) - 14
    loaded = ProductIndex.load(tmp_path / "part")
    assert loaded.metadata.equals(full.metadata)
    assert np.allclose(loaded.embeddings, full.embeddings, atol=1e-6)
    assert np.allclose(loaded.text_embeddings, full.text_embeddings, atol=1e-6)
    q = _queries(dual_dir)
    assert np.array_equal(loaded.search(q, 8)[1], full.search(q, 8)[1])
    assert add_products(tmp_path / "part", products, progress=False)[1] == 0


def test_add_refuses_another_model(dual_dir, products, cache, tmp_path):
    build_index(dual_dir, products[:10], cache, tmp_path / "idx", progress=False)
    torch.manual_seed(5)
    cfg = fit_to_cache(load_config(DualRunConfig, "tiny", component="dual"), cache)
    build_dual_task(cfg).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="another dual encoder"):
        add_products(tmp_path / "idx", products[10:], model=tmp_path / "other", progress=False)


@pytest.mark.parametrize("cfg", [IndexConfig(kind="hnsw", hnsw_m=8, hnsw_ef_search=64),
                                 IndexConfig(kind="ivf", ivf_nlist=4, ivf_nprobe=4),
                                 IndexConfig(exact_threshold=10)])        # auto above the threshold: hnsw
def test_exact_and_approximate_indexes_agree_on_a_small_set(dual_dir, products, cache, tmp_path, cfg):
    exact = build_index(dual_dir, products, cache, tmp_path / "exact", progress=False)
    approx = build_index(dual_dir, products, cache, tmp_path / "approx", cfg, progress=False)
    assert approx.kind == (cfg.kind if cfg.kind != "auto" else "hnsw")
    q = np.concatenate([_queries(dual_dir), exact.embeddings[:6]])
    _, want = exact.search(q, 5)
    _, got = ProductIndex.load(tmp_path / "approx").search(q, 5)
    assert np.array_equal(got, want)


def test_recall_latency_curve_measures_against_exact_search(dual_dir, products, cache, tmp_path):
    from kaleido.search.measure import format_curve, recall_latency_curve

    index = build_index(dual_dir, products, cache, tmp_path / "idx", progress=False)
    rows = recall_latency_curve(index.embeddings, index.text_embeddings, k=5, hnsw_m=(8,), ef_search=(64,),
                                ivf_nprobe=(1, 100), cfg=IndexConfig(ivf_nlist=4))
    assert [r["index"] for r in rows] == ["flat", "hnsw M=8", "ivf nlist=4", "ivf nlist=4"]
    assert rows[0]["recall@5"] == rows[1]["recall@5"] == rows[3]["recall@5"] == 1.0  # nprobe 100 -> all 4 cells
    assert rows[2]["recall@5"] <= 1.0 and all(r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert "efSearch=64" in format_curve(rows)


def test_filters_keep_only_matching_products(dual_dir, products, cache, tmp_path):
    index = build_index(dual_dir, products, cache, tmp_path / "idx", progress=False)
    engine = SearchEngine.load(tmp_path / "idx")
    category = products[0].category
    members = {p.id for p in products if p.category == category}
    hits = engine.search_text("shirt", k=50, filters={"category": category.lower()})
    assert {h.product_id for h in hits} == members and len(hits) == len(members)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    colour = products[0].attributes["baseColour"]
    both = {p.id for p in products if p.category == category and p.attributes.get("baseColour") == colour}
    assert {h.product_id for h in engine.search_text("x", k=50, filters={"category": category,
                                                                         "basecolour": colour})} == both
    two = [products[0].subcategory, products[5].subcategory]
    assert {h.subcategory for h in engine.search_text("x", k=50, filters={"subcategory": two})} == set(two)
    with pytest.raises(ValueError, match="unknown filter"):
        index.filter_rows({"material": "cotton"})


def test_image_queries(dual_dir, products, cache, tmp_path):
    build_index(dual_dir, products, cache, tmp_path / "idx", progress=False)
    engine = SearchEngine.load(tmp_path / "idx")
    pid = products[3].id
    hits = engine.search_image(pid, k=5)
    assert pid not in [h.product_id for h in hits] and len(hits) == 5      # the query itself left out
    item = cache[pid]
    by_features = engine.search_image((item.features, item.positions), k=6)
    # Its own image scores 1 and nothing scores more. It need not rank first: the fixture's
    # colour-statistics features lose brightness to the tower's LayerNorm, so two grey products
    # on white can embed identically (a tie within float noise).
    own = {h.product_id: h.score for h in by_features}
    assert own.get(pid) == pytest.approx(1.0, abs=1e-5) and by_features[0].score == pytest.approx(1.0, abs=1e-5)
    others = [h.score for h in by_features if h.product_id != pid][:4]
    assert others == pytest.approx([h.score for h in hits[:4]], abs=1e-5)   # the same ranking, by id or by features
    with pytest.raises(ValueError, match="extractor"):
        engine.search_image(__import__("PIL.Image").Image.new("RGB", (8, 8)))
    titles = engine.search_product_to_text(pid, k=3)
    assert len(titles) == 3 and titles[0]["score"] >= titles[2]["score"]
    given = engine.search_product_to_text(pid, k=2, texts=["a", products[3].title, "b"])
    assert len(given) == 2 and given[0]["product_id"] is None


def test_raw_image_queries_go_through_the_extractor(dual_dir, products, cache, tmp_path, pretrain_data):
    from conftest import ColourStatsExtractor  # the extractor the fixture cache was built with

    from kaleido.search import cache_extractor

    build_index(dual_dir, products, cache, tmp_path / "idx", progress=False)
    extractor = ColourStatsExtractor()
    engine = SearchEngine.load(tmp_path / "idx", extractor=lambda image: extractor.extract([image])[0])
    image = pretrain_data["catalog"].load_image(products[3])
    hit = engine.search_image(image, k=1)[0]
    assert hit.product_id == products[3].id and hit.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="patch config"):
        cache_extractor(cache)                              # the fixture cache records no patch config


def test_two_stage_returns_the_exhaustive_answer_when_k_covers_the_catalog(dual_dir, reranker_dir, products, cache,
                                                                           tmp_path):
    from kaleido.evaluation.evaluate import retrieval_task
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.run import load_processor

    build_index(dual_dir, products, cache, tmp_path / "idx", progress=False)
    engine = SearchEngine.load(tmp_path / "idx", reranker=reranker_dir)
    task = retrieval_task(reranker_dir)
    processor = load_processor(reranker_dir, 64, cache.meta["grids"])
    pairs = PairInputs(products, cache, processor)
    n = len(products)
    for query in QUERIES[:2]:
        ids = processor.encode_text(query)[0]
        with torch.no_grad():
            exhaustive = task.score(pairs.batch(range(n), [0] * n, text_ids=[ids] * n)).numpy()
        want = [products[i].id for i in np.argsort(-exhaustive, kind="stable")]
        hits = engine.search_text(query, k=n, rerank=n)
        assert [h.product_id for h in hits] == want
        assert np.allclose([h.rerank_score for h in hits], np.sort(exhaustive)[::-1], atol=1e-4)
        dual_only = engine.search_text(query, k=n)
        assert [h.product_id for h in dual_only] != want      # the re-ranking did change the order
    top = engine.search_text(QUERIES[0], k=10, rerank=4)       # re-ranked head, dual-encoder tail
    assert all(h.rerank_score is not None for h in top[:4]) and all(h.rerank_score is None for h in top[4:])
    assert [h.product_id for h in top[4:]] == [h.product_id for h in engine.search_text(QUERIES[0], k=10)[4:]]
    image_hits = engine.search_image(products[0].id, k=3, rerank=5)
    assert len(image_hits) == 3 and image_hits[0].rerank_score is not None


def test_cli_trains_builds_and_searches(pretrain_data, tmp_path, capsys):
    d = pretrain_data
    data = ["--catalog", str(d["catalog_dir"]), "--image-root", str(d["image_root"]), "--cache", str(d["cache"])]
    run = tmp_path / "dual"
    train = ["dual", "train", "--config", "tiny", *data, "--split-file", str(d["split"]), "--val-split", "test",
             "--out", str(run)]                                 # the fixture's val split holds 1 product
    assert main([*train, "train.max_steps=2"]) == 0
    for name in ("config.yaml", "log.csv", "final/model.safetensors", "final/dual_processor.json"):
        assert (run / name).is_file(), name
    assert main([*train, "train.max_steps=3"]) == 0             # resumed at step 2
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2", "3"]
    assert any(r.get("val_i2t_r1") for r in rows)               # validated on the test split
    capsys.readouterr()
    assert main(["dual", "eval", "--model", str(run / "final"), *data, "--split-file", str(d["split"]),
                 "--split", "train", "--json", str(tmp_path / "eval.json"), "kb101.queries=6",
                 "kb101.negatives=4", "kb101.draws=1"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0 <= result["retrieval"]["SumR"] <= 600 and "category" in result["zero_shot"]
    assert main(["dual", "zero-shot", "--model", str(run / "final"), *data, "--target", "category",
                 "--out", str(tmp_path / "zs.csv")]) == 0
    assert len((tmp_path / "zs.csv").read_text().splitlines()) == len(d["catalog"]) + 1
    index = tmp_path / "index"
    assert main(["index", "build", *data, "--model", str(run / "final"), "--out", str(index),
                 "--split-file", str(d["split"]), "--split", "train"]) == 0
    assert main(["index", "add", "--index", str(index), *data]) == 0   # the other splits, no rebuild
    assert main(["index", "measure", str(index), "--queries", "5", "--k", "3"]) == 0
    capsys.readouterr()
    assert main(["search", "red floral summer dress", "--index", str(index), "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == 3 and out["results"][0]["rank"] == 1
    assert {"product_id", "title", "score", "category", "image"} <= set(out["results"][0])
    category = d["catalog"].products[0].category
    assert main(["search", "--product-image", d["catalog"].products[0].id, "--index", str(index), "--k", "2",
                 "--filter", f"category={category}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    others = sum(p.category == category for p in d["catalog"].products) - 1      # the query product left out
    assert all(r["category"] == category for r in out["results"]) and len(out["results"]) == min(2, others)
    assert d["catalog"].products[0].id not in [r["product_id"] for r in out["results"]]
    assert main(["search", "--index", str(index)]) == 2         # no query: an error message, no traceback
    assert main(["search", "x", "--index", str(index), "--filter", "nokey"]) == 2


def test_eval_reports_the_dual_encoder_and_the_two_stage_system(dual_dir, reranker_dir, products, cache):
    from kaleido.evaluation.evaluate import EvalConfig, evaluate_retrieval, retrieval_task
    from kaleido.evaluation.kb101 import KB101Config
    from kaleido.finetune.pairs import PairInputs
    from kaleido.finetune.run import load_processor

    pairs = PairInputs(products, cache, load_processor(reranker_dir, 64, cache.meta["grids"]))
    task = retrieval_task(reranker_dir)
    kb = KB101Config(queries=10, negatives=8, draws=2)
    n = len(pairs)

    def run(k):
        return evaluate_retrieval(task, pairs, EvalConfig(kb101=kb, full_catalog=n, dual=str(dual_dir), rerank_k=k),
                                  cache)

    every, one = run(n), run(1)
    # re-ranking every candidate is the single-stream model's own answer
    assert every["two_stage"]["SumR"] == pytest.approx(every["SumR"])
    assert every["two_stage"]["full_catalog"]["TIR"] == every["full_catalog"]["TIR"]
    # re-ranking one candidate keeps the dual encoder's top answer
    assert one["two_stage"]["ITR"]["R@1"] == pytest.approx(one["dual"]["ITR"]["R@1"])
    assert one["two_stage"]["full_catalog"]["ITR"]["R@1"] == one["dual"]["full_catalog"]["ITR"]["R@1"]
    assert every["dual"]["SumR"] == pytest.approx(one["dual"]["SumR"])  # same draws, same dual scores
