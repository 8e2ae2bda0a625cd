"""KB-101 sampling, retrieval / classification metrics and the paper tables (fast, CPU, seeded)."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from kaleido.evaluation import (
    KB101Config,
    RetrievalDraw,
    classification_metrics,
    describe,
    format_full_catalog,
    format_table2,
    format_table3,
    full_catalog_ranks,
    ranks_from_scores,
    recall_at_k,
    retrieval_summary,
    sample_draw,
    sample_kb101,
    to_jsonable,
)

# (category, subcategory, size): A's subcategories can fill each other, B (50 products) and C
# (70) are smaller than 101 candidates, so their fill-ins reach outside the category; "" is
# the unknown subcategory, a label of its own.
LAYOUT = [("A", "a1", 150), ("A", "a2", 40), ("A", "a3", 5),
          ("B", "b1", 30), ("B", "b2", 20),
          ("C", "c1", 60), ("C", "", 10)]


@pytest.fixture(scope="module")
def catalog():
    cats = [c for c, _, n in LAYOUT for _ in range(n)]
    subs = [s for _, s, n in LAYOUT for _ in range(n)]
    order = np.random.default_rng(7).permutation(len(cats))  # labels not sorted by index
    return np.array(subs)[order], np.array(cats)[order]


@pytest.fixture(scope="module")
def draws(catalog):
    subs, cats = catalog
    return sample_kb101(subs, cats, KB101Config(queries=200, negatives=100, draws=3, seed=11))


def _tiers(subs, cats, draw):
    """(Q, N) tier of every negative: 0 same subcategory, 1 same category, 2 elsewhere."""
    q = draw.candidates[:, :1]
    neg = draw.candidates[:, 1:]
    same_sub = subs[neg] == subs[q]
    same_cat = cats[neg] == cats[q]
    return np.where(same_sub, 0, np.where(same_cat, 1, 2))


def test_draw_shapes_positive_first_and_distinct_negatives(catalog, draws):
    subs, _ = catalog
    assert len(draws) == 3
    for d in draws:
        assert d.queries.shape == (200,) and d.candidates.shape == (200, 101)
        assert len(np.unique(d.queries)) == 200
        np.testing.assert_array_equal(d.candidates[:, 0], d.queries)
        assert not (d.candidates[:, 1:] == d.queries[:, None]).any()
        assert all(len(np.unique(row)) == 101 for row in d.candidates)
        assert d.candidates.min() >= 0 and d.candidates.max() < len(subs)


def test_negatives_tiers_and_counters(catalog, draws):
    subs, cats = catalog
    size = {s: n for _, s, n in LAYOUT}
    cat_size = {c: sum(n for c2, _, n in LAYOUT if c2 == c) for c, _, _ in LAYOUT}
    seen = set()
    for d in draws:
        tiers = _tiers(subs, cats, d)
        assert d.from_subcategory == (tiers == 0).sum()
        assert d.filled_from_category == (tiers == 1).sum()
        assert d.filled_from_any == (tiers == 2).sum()
        for q, row in zip(d.queries, tiers):
            s, c = subs[q], cats[q]
            counts = np.bincount(row, minlength=3)
            seen.add(s)
            if size[s] - 1 >= 100:  # big subcategory: only same-subcategory negatives
                assert counts[0] == 100
            else:  # every other product of the subcategory, then the category, then anywhere
                assert counts[0] == size[s] - 1
                assert counts[1] == min(100 - counts[0], cat_size[c] - size[s])
                assert counts[2] == 100 - counts[0] - counts[1]
    assert seen == set(size)  # every subcategory, the unknown "" included, was a query
    # the hand-made layout exercises all three tiers
    assert all(d.filled_from_category > 0 and d.filled_from_any > 0 for d in draws)


def test_unknown_subcategory_is_a_label_of_its_own(catalog, draws):
    subs, cats = catalog
    d = draws[0]
    rows = subs[d.queries] == ""
    assert rows.any()
    negs = d.candidates[rows, 1:]
    assert ((subs[negs] == "").sum(axis=1) == 9).all()  # the 9 other unknowns come first
    assert (subs[negs[:, :9]] == "").all()


def test_draws_are_seeded(catalog, draws):
    subs, cats = catalog
    cfg = KB101Config(queries=200, negatives=100, draws=3, seed=11)
    again = sample_draw(subs, cats, cfg, draw=1)
    np.testing.assert_array_equal(again.candidates, draws[1].candidates)
    assert again.filled_from_any == draws[1].filled_from_any
    assert not np.array_equal(draws[0].queries, draws[1].queries)
    other_seed = sample_draw(subs, cats, KB101Config(queries=200, negatives=100, seed=12), draw=1)
    assert not np.array_equal(other_seed.candidates, draws[1].candidates)


def test_query_cap_and_describe(catalog, caplog):
    subs, cats = catalog
    d = sample_kb101(subs, cats, KB101Config(queries=1000, negatives=100, draws=2))
    assert "every product is a query" in caplog.text
    n = len(subs)
    assert all(sorted(x.queries.tolist()) == list(range(n)) for x in d)
    text = describe(d)
    total = 2 * n * 100
    assert text.startswith(f"2 draws x {n} queries x 101 candidates; negatives: ")
    share = 100 * sum(x.filled_from_any for x in d) / total
    assert f"{share:.1f}% from anywhere" in text
    assert f"capped at the catalog's {n} products; 1000 requested" in text
    assert "capped" not in describe(sample_kb101(subs, cats, KB101Config(queries=50, draws=1)))


def test_errors_name_the_problem(catalog):
    subs, cats = catalog
    with pytest.raises(ValueError, match=r"has 40 products.*negatives to at most 39"):
        sample_draw(subs[:40], cats[:40], KB101Config(), draw=0)
    with pytest.raises(ValueError, match="one label per product"):
        sample_kb101(subs, cats[:-1])
    with pytest.raises(ValueError, match="KB101Config.draws"):
        sample_kb101(subs, cats, KB101Config(draws=0))
    # exactly negatives + 1 products is enough: every other product is a negative
    d = sample_draw(subs[:101], cats[:101], KB101Config(queries=3), draw=0)
    assert sorted(d.candidates[0].tolist()) == list(range(101))


def test_large_catalog_is_cheap():
    rng = np.random.default_rng(0)
    sub = rng.zipf(1.6, 40_000) % 120
    d = sample_draw(sub.astype(str), (sub % 40).astype(str), KB101Config(), draw=0)
    assert d.candidates.shape == (1000, 101)
    assert d.from_subcategory + d.filled_from_category + d.filled_from_any == 100_000


# ----------------------------------------------------------------------------- metrics


def test_ranks_from_known_scores():
    scores = np.array([[0.9, 0.1, 0.5, 0.2],
                       [0.5, 0.8, 0.3, 0.9],
                       [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_array_equal(ranks_from_scores(scores), [1, 3, 4])
    np.testing.assert_array_equal(ranks_from_scores(scores, np.array([0, 3, 2])), [1, 1, 2])
    assert ranks_from_scores(scores).dtype == np.int64


def test_ties_are_pessimistic():
    assert (ranks_from_scores(np.zeros((4, 7))) == 7).all()  # a collapsed scorer ranks last
    np.testing.assert_array_equal(ranks_from_scores([[0.5, 0.5, 0.1], [0.5, 0.7, 0.5]]), [2, 3])
    assert recall_at_k(ranks_from_scores(np.ones((10, 101))))["R@10"] == 0.0


def test_rank_errors():
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores([[np.nan, 0.1]])
    with pytest.raises(ValueError, match="out of range"):
        ranks_from_scores(np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="shape"):
        ranks_from_scores(np.zeros(3))
    with pytest.raises(ValueError, match="1-based"):
        recall_at_k([0, 1])


def test_recall_at_k():
    assert recall_at_k([1, 2, 5, 11]) == {"R@1": 0.25, "R@5": 0.75, "R@10": 0.75}
    assert recall_at_k(np.array([3, 3]), ks=(2, 3)) == {"R@2": 0.0, "R@3": 1.0}


def test_retrieval_summary_sum_r():
    itr = [np.array([1, 2, 6, 20]), np.array([1, 1, 3, 12])]  # R@1 .25/.5, R@5 .5/.75, R@10 .75/.75
    tir = [np.array([1, 1, 1, 1]), np.array([2, 7, 50, 1])]  # R@1 1/.25, R@5 1/.5, R@10 1/.75
    out = retrieval_summary(itr, tir)
    assert out["draws"] == 2 and out["queries"] == [4, 4]
    assert out["ITR"] == pytest.approx({"R@1": 0.375, "R@5": 0.625, "R@10": 0.75})
    assert out["TIR"] == pytest.approx({"R@1": 0.625, "R@5": 0.75, "R@10": 0.875})
    # draw 1: (.25 + .5 + .75 + 3) x 100 = 450
    # draw 2: (.5 + .75 + .75 + .25 + .5 + .75) x 100 = 350
    assert out["SumR"] == pytest.approx(400.0)
    assert out["std"]["SumR"] == pytest.approx(50.0)
    assert out["std"]["ITR"]["R@1"] == pytest.approx(0.125)
    json.dumps(out)
    with pytest.raises(ValueError, match="per draw"):
        retrieval_summary(itr, tir[:1])


def test_full_catalog_on_a_permuted_identity():
    n = 20
    perm = np.arange(n)
    perm[5:] = np.roll(perm[5:], 1)  # 5 fixed points, 15 products matched to a wrong text
    scores = np.eye(n)[perm]  # image i scores only text perm[i]
    out = full_catalog_ranks(scores)
    assert out["n"] == n
    for d in ("ITR", "TIR"):  # a wrong match leaves the true pair tied with n - 2 others: rank n
        assert out[d]["R@1"] == out[d]["R@10"] == 0.25
        assert out[d]["median_rank"] == n
        assert out[d]["mrr"] == pytest.approx((5 + 15 / n) / n)


def test_full_catalog_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=(23, 23)).astype(float)  # many ties
    itr = [1 + sum(scores[i, j] >= scores[i, i] for j in range(23) if j != i) for i in range(23)]
    tir = [1 + sum(scores[i, j] >= scores[j, j] for i in range(23) if i != j) for j in range(23)]
    out = full_catalog_ranks(scores, chunk_rows=4)
    assert out["ITR"]["median_rank"] == np.median(itr)
    assert out["TIR"]["mrr"] == pytest.approx(np.mean(1 / np.array(tir)))
    assert out["ITR"]["R@5"] == pytest.approx(np.mean(np.array(itr) <= 5))
    assert out == full_catalog_ranks(scores)  # chunking changes nothing
    with pytest.raises(ValueError, match="square"):
        full_catalog_ranks(np.zeros((3, 4)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    true_labels = np.array([f"class{i}" for i in range(7)])
    pred_labels = np.concatenate([true_labels, ["extra1", "extra2"]])  # predicted, never true
    y_true = rng.choice(true_labels[:6 + seed % 2], 300).tolist()
    y_pred = [t if rng.random() < 0.6 else str(rng.choice(pred_labels)) for t in y_true]
    out = classification_metrics(y_true, y_pred)
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert out["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true), zero_division=0))
    assert out["classes"] == len(set(y_true)) and out["n"] == 300


def test_classification_metrics_int_labels_and_errors():
    y_true, y_pred = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 5]
    out = classification_metrics(y_true, y_pred)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true), zero_division=0))
    assert classification_metrics(["a", "b"], ["b", "a"])["macro_f1"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        classification_metrics([1, 2], [1])
    with pytest.raises(ValueError, match="strings but y_pred holds numbers"):
        classification_metrics(["a", "b"], [1, 2])


# ----------------------------------------------------------------------------- tables


def _summary(r1):
    return {"ITR": {"R@1": r1, "R@5": 0.5, "R@10": 0.6}, "TIR": {"R@1": 0.3388, "R@5": 0.6,
            "R@10": 0.7}, "SumR": 123.456, "std": {"ITR": {"R@1": 0.01, "R@5": 0, "R@10": 0},
            "TIR": {"R@1": 0, "R@5": 0, "R@10": 0}, "SumR": 1.5}, "draws": 5}


def test_table2():
    text = format_table2({"Kaleido-BERT": _summary(0.2799),
                          "FashionBERT": _summary(np.float64(0.2396)),
                          "broken": {"ITR": {"R@1": 0.1}}})
    lines = text.splitlines()
    assert lines[0] == ("| system | ITR R@1 | ITR R@5 | ITR R@10 | TIR R@1 | TIR R@5 | TIR R@10 "
                        "| SumR |")
    assert len(lines) == 5
    assert lines[2] == "| Kaleido-BERT | 27.99 | 50.00 | 60.00 | 33.88 | 60.00 | 70.00 | 123.5 |"
    assert "| FashionBERT | 23.96 |" in lines[3]
    assert lines[4] == "| broken | 10.00 | - | - | - | - | - | - |"
    assert "27.99 ± 1.00" in format_table2({"x": _summary(0.2799)}, with_std=True)


def test_table3_missing_parts():
    rows = {
        "Kaleido-BERT": {"category": {"accuracy": 0.9507, "macro_f1": 0.81},
                         "subcategory": {"accuracy": 0.8807, "macro_f1": 0.7},
                         "caption": {"BLEU-4": 0.057, "METEOR": None, "ROUGE-L": 0.31,
                                     "CIDEr": 0.326}},
        "no captions": {"category": {"accuracy": 0.9125, "macro_f1": 0.8}},
    }
    lines = format_table3(rows).splitlines()
    assert lines[0].startswith("| system | CR acc | CR macro-F1 | SUB acc | SUB macro-F1 | BLEU-4 ")
    assert lines[2] == "| Kaleido-BERT | 95.07 | 81.00 | 88.07 | 70.00 | 5.7 | n/a | 31.0 | 32.6 |"
    assert lines[3] == "| no captions | 91.25 | 80.00 | - | - | - | - | - | - |"
    with pytest.raises(ValueError, match="system name"):
        format_table3([1, 2])


def test_full_catalog_table_and_json():
    out = full_catalog_ranks(np.eye(4))
    text = format_full_catalog({"a|b": out, "empty": {}})
    assert "| a\\|b | 4 | 100.00 | 100.00 | 100.00 | 1 | 1.000 |" in text
    assert "| empty | - |" in text
    draw = RetrievalDraw(queries=np.arange(2), candidates=np.zeros((2, 3), dtype=np.int64),
                         from_subcategory=np.int64(4), filled_from_category=0, filled_from_any=0)
    payload = to_jsonable({"draw": draw, "score": np.float32(0.5), 3: (np.int64(1), np.arange(2))})
    assert json.loads(json.dumps(payload)) == {
        "draw": {"queries": [0, 1], "candidates": [[0, 0, 0], [0, 0, 0]], "from_subcategory": 4,
                 "filled_from_category": 0, "filled_from_any": 0, "queries_requested": 0,
                 "same_title_excluded": 0},
        "score": 0.5, "3": [1, [0, 1]]}


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_evals_puts_systems_side_by_side(tmp_path, capsys):
    import json

    compare = _load_script("compare_evals")
    ret = {"ITR": {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3}, "TIR": {"R@1": 0.05, "R@5": 0.15, "R@10": 0.25},
           "SumR": 105.0, "sampling": "1 draw"}
    a = {"name": "A", "retrieval": ret, "category": {"accuracy": 0.9, "macro_f1": 0.5},
         "caption": {"scores": {"BLEU-4": 0.123, "METEOR": None, "ROUGE-L": 0.3, "CIDEr": 0.45}}}
    b = {"row": "B row", "retrieval": {**ret, "SumR": 50.0}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "t.md"
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "| A | 10.00 | 20.00 | 30.00 | 5.00 | 15.00 | 25.00 | 105.0 |" in text
    assert "| B row |" in text and "| 50.0 |" in text
    assert "| A | 90.00 | 50.00 | - | - | 12.3 | n/a | 30.0 | 45.0 |" in text  # B has no Table 3 row
    assert text.count("| B row |") == 1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="bad.json"):
        compare.main([str(tmp_path / "bad.json")])


def _two_stage(r1: float) -> dict:
    """A ``kaleido eval ... dual= prior=`` retrieval result as its JSON reads back (weights as strings)."""
    itm = {"pairwise_accuracy": 0.6471, "auc": 0.6, "accuracy": 0.55, "positive_accuracy": 0.7,
           "negative_accuracy": 0.4, "pairs": 1450}
    dual = {**_summary(0.45), "itm": {**itm, "pairwise_accuracy": 0.9159}}
    return {"sampling": "5 draws", "itm": itm, "prior": {**_summary(0.49), "itm": {**itm, "auc": 0.887}},
            "dual": dual, "two_stage": {**_summary(r1), "rerank_k": 10},
            "two_stage_fused": {"0.5": {**_summary(0.46), "fusion_weight": 0.5,
                                        "itm": {**itm, "pairwise_accuracy": 0.913}}}}


def test_retrieval_systems_names_every_row_of_a_two_stage_result():
    from kaleido.evaluation import format_itm, retrieval_systems

    assert list(retrieval_systems("M", _summary(0.2))) == ["M"]
    rows = retrieval_systems("M", _two_stage(0.15))
    assert list(rows) == ["linear reference (same draws)", "first stage (same draws)",
                          "first stage top 10 + M ITM", "first stage top 10, its logit + 0.5 x M ITM"]
    assert rows["first stage top 10 + M ITM"]["ITR"]["R@1"] == 0.15
    text = format_itm({"M": _two_stage(0.15), **rows})
    assert "| M | 0.647 | 0.600 | 0.550 | 0.700 | 0.400 | 1450 |" in text
    assert "| first stage (same draws) | 0.916 |" in text
    assert "| linear reference (same draws) | 0.647 | 0.887 |" in text
    assert "first stage top 10 + M ITM |" not in text  # re-ranking alone has no ITM pairs of its own
    with pytest.raises(ValueError, match="format_itm"):
        format_itm([1, 2])


def test_compare_evals_prefixes_the_rows_of_two_stage_results(tmp_path, capsys):
    import json

    compare = _load_script("compare_evals")
    for name, r1 in (("A", 0.15), ("B", 0.25)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "retrieval": _two_stage(r1)}))
    assert compare.main([str(tmp_path / "A.json"), str(tmp_path / "B.json")]) == 0
    text = capsys.readouterr().out
    assert "| first stage top 10 + A ITM | 15.00 ± 1.00 |" in text
    assert "| first stage top 10 + B ITM | 25.00 ± 1.00 |" in text
    assert "| B: first stage (same draws) | 45.00 ± 1.00 |" in text
    assert "ITM on clean pairs" in text and "| first stage top 10, its logit + 0.5 x B ITM | 0.913 |" in text


def test_choose_fusion_weight_reads_w_off_val_and_reports_test_at_it(tmp_path, capsys):
    import json

    choose = _load_script("choose_fusion_weight")

    def result(path, split, sums, **extra):
        fused = {str(w): {"SumR": s, "std": {"SumR": 0.5}} for w, s in sums.items()}
        path.write_text(json.dumps({"name": "sys", "split": split, **extra,
                                    "retrieval": {"two_stage_fused": fused}}))
        return str(path)

    val = result(tmp_path / "val.json", "val", {0.25: 440.0, 0.5: 445.0, 1.0: 441.0})
    test = result(tmp_path / "test.json", "test", {0.25: 450.0, 0.5: 443.0, 1.0: 449.0})
    assert choose.main(["--val", val, "--test", test]) == 0
    # val picks 0.5, so the test figure is 443.0, not the 450.0 that reading w off test would give
    assert "| sys | 0.25: 440.0, 0.5: 445.0, 1: 441.0 | 0.5 | 443.0 ± 0.5 | 0.25 (450.0) |" in capsys.readouterr().out
    with pytest.raises(SystemExit):   # the splits swapped
        choose.main(["--val", test, "--test", val])
    other = result(tmp_path / "other.json", "test", {0.25: 450.0, 2.0: 1.0})
    with pytest.raises(SystemExit, match="different weights"):
        choose.main(["--val", val, "--test", other])
    (tmp_path / "plain.json").write_text(json.dumps({"retrieval": {"SumR": 1.0}}))
    with pytest.raises(SystemExit, match="no fused"):
        choose.main(["--val", str(tmp_path / "plain.json"), "--test", test])


# ----------------------------------------------------------------------------- same titles


def _twin_titles(n: int, seed: int = 5) -> np.ndarray:
    """Titles of n products, ~1/3 of them shared, spelt with varying case and spaces."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, int(n * 0.75), n)
    spelling = rng.integers(0, 3, n)
    return np.array([[f"Shirt {b}", f"  shirt {b}", f"SHIRT {b} "][k] for b, k in zip(base, spelling)])


def test_same_title_products_are_never_negatives(catalog):
    subs, cats = catalog
    titles = _twin_titles(len(subs))
    norm = np.char.lower(np.char.strip(titles))
    cfg = KB101Config(queries=1000, negatives=100, draws=2, seed=3)
    draws = sample_kb101(subs, cats, cfg, titles=titles)
    size = {s: (subs == s).sum() for s in set(subs)}
    cat_size = {c: (cats == c).sum() for c in set(cats)}
    twins_in_pools = np.zeros(4, dtype=int)  # big subcategory, small one, category, anywhere
    for d in draws:
        neg = d.candidates[:, 1:]
        assert not (norm[neg] == norm[d.queries][:, None]).any()
        assert all(len(np.unique(row)) == 101 for row in d.candidates)
        tiers = _tiers(subs, cats, d)
        assert d.from_subcategory == (tiers == 0).sum()
        assert d.filled_from_category == (tiers == 1).sum()
        assert d.filled_from_any == (tiers == 2).sum()
        excluded = 0
        for q, row in zip(d.queries, tiers):
            s, c = subs[q], cats[q]
            twin = (norm == norm[q]) & (np.arange(len(subs)) != q)
            in_sub = int((twin & (subs == s)).sum())
            in_cat = int((twin & (cats == c) & (subs != s)).sum())
            excluded += int(twin.sum())
            counts = np.bincount(row, minlength=3)
            if size[s] - 1 - in_sub >= 100:
                assert counts[0] == 100
                twins_in_pools[0] += in_sub
                continue
            # every eligible product of the subcategory, then of the category, then anywhere
            assert counts[0] == size[s] - 1 - in_sub
            assert counts[1] == min(100 - counts[0], cat_size[c] - size[s] - in_cat)
            assert counts[2] == 100 - counts[0] - counts[1]
            twins_in_pools[1:] += [in_sub, in_cat if counts[1] else 0,
                                   int(twin.sum()) - in_sub - in_cat if counts[2] else 0]
        assert d.same_title_excluded == excluded > 0
    assert (twins_in_pools > 0).all()  # the rule was exercised in every tier, the any-fill included
    total = sum(d.same_title_excluded for d in draws)
    assert f"{total} same-title products excluded" in describe(draws)


def test_same_title_exclusion_by_hand():
    titles = ["Red Shirt", "red shirt ", " RED SHIRT", "Blue", "blue", "Green"]
    subs = ["s", "s", "t", "s", "t", "u"]
    cats = ["A", "A", "A", "A", "B", "B"]
    cfg = KB101Config(queries=6, negatives=3, draws=2)
    draws = sample_kb101(subs, cats, cfg, titles=titles)
    for d in draws:
        assert d.same_title_excluded == 2 + 2 + 2 + 1 + 1 + 0  # twins of every query
        row = d.candidates[list(d.queries).index(0)]
        # product 0: same subcategory {1, 3} minus its twin 1, its category's other subcategory
        # holds only the twin 2, so the rest is filled from anywhere: 4 and 5
        assert row[1] == 3 and sorted(row[2:]) == [4, 5]
        row = d.candidates[list(d.queries).index(3)]  # twin 4 is in another category
        assert row[1:3].tolist() == [0, 1] and row[3] in (2, 5)
    assert describe(draws).endswith(", 16 same-title products excluded from the negatives")
    # without titles the same catalog samples twins and excludes nothing
    plain = sample_kb101(subs, cats, cfg)
    assert all(d.same_title_excluded == 0 for d in plain)
    assert "same-title" not in describe(plain)
    with pytest.raises(ValueError, match=r"3 of the 6 products .* at most 3"):
        sample_draw(subs, cats, KB101Config(queries=6, negatives=4), draw=0, titles=titles)
    with pytest.raises(ValueError, match="one title per product"):
        sample_draw(subs, cats, cfg, draw=0, titles=titles[:-1])


def test_distinct_titles_change_nothing(catalog, draws):
    subs, cats = catalog
    cfg = KB101Config(queries=200, negatives=100, draws=3, seed=11)
    titled = sample_kb101(subs, cats, cfg, titles=[f"title {i}" for i in range(len(subs))])
    for a, b in zip(draws, titled):
        np.testing.assert_array_equal(a.candidates, b.candidates)
        assert (a.from_subcategory, a.filled_from_category, a.filled_from_any) == \
            (b.from_subcategory, b.filled_from_category, b.filled_from_any)
        assert b.same_title_excluded == 0


def _ranks(summary: dict) -> tuple:
    return summary["R@1"], summary["median_rank"], summary["mrr"]


def test_full_catalog_groups_by_hand():
    scores = np.array([[0.2, 0.9, 0.5, 0.1],
                       [0.3, 0.4, 0.6, 0.8],
                       [0.7, 0.1, 0.3, 0.2],
                       [0.5, 0.6, 0.3, 0.4]])
    groups = np.array([7, 7, 1, 2])  # products 0 and 1 share a title
    out = full_catalog_ranks(scores, groups=groups)
    # ITR: row 0 best hit 0.9 -> 1; row 1 best hit 0.4 < 0.6, 0.8 -> 3; row 2 -> 2; row 3 -> 3
    assert _ranks(out["ITR"]) == pytest.approx((0.25, 2.5, (1 + 1 / 3 + 1 / 2 + 1 / 3) / 4))
    # TIR: column 0 best hit 0.3 < 0.7, 0.5 -> 3; column 1 best hit 0.9 -> 1; 2 -> 4 (tie); 3 -> 2
    assert _ranks(out["TIR"]) == pytest.approx((0.25, 2.5, (1 / 3 + 1 + 1 / 4 + 1 / 2) / 4))
    # strict: the diagonal only, ITR ranks 3, 3, 2, 3 and TIR ranks 4, 3, 4, 2
    assert _ranks(out["strict"]["ITR"]) == pytest.approx((0.0, 3.0, (1 / 3 * 3 + 1 / 2) / 4))
    assert _ranks(out["strict"]["TIR"]) == pytest.approx((0.0, 3.5, (1 / 2 + 1 / 3 + 1 / 2) / 4))
    plain = full_catalog_ranks(scores)
    assert set(plain) == {"ITR", "TIR", "n"}
    assert out["strict"] == {"ITR": plain["ITR"], "TIR": plain["TIR"]}
    assert out["in_shared_group"] == 2 and out["n"] == 4
    singletons = full_catalog_ranks(scores, groups=np.arange(4))  # every product its own group
    assert {d: singletons[d] for d in ("ITR", "TIR")} == {d: plain[d] for d in ("ITR", "TIR")}
    with pytest.raises(ValueError, match="groups must be"):
        full_catalog_ranks(scores, groups=groups[:3])


@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 64])
def test_full_catalog_chunked_equals_in_memory(chunk_rows):
    from kaleido.evaluation.metrics import full_catalog_ranks_chunked

    rng = np.random.default_rng(chunk_rows)
    n = 50
    scores = rng.integers(0, 6, size=(n, n)).astype(float)  # many ties
    groups = rng.integers(0, 30, n)
    # an independent formulation: per row / column, the best hit and the other-group count
    hit = groups[:, None] == groups[None, :]
    itr = [1 + ((scores[i] >= scores[i, hit[i]].max()) & ~hit[i]).sum() for i in range(n)]
    tir = [1 + ((scores[:, j] >= scores[hit[:, j], j].max()) & ~hit[:, j]).sum() for j in range(n)]
    expected = full_catalog_ranks(scores, groups=groups)
    assert expected["ITR"]["mrr"] == pytest.approx(np.mean(1 / np.array(itr)))
    assert expected["TIR"]["mrr"] == pytest.approx(np.mean(1 / np.array(tir)))
    assert expected["TIR"]["median_rank"] == np.median(tir)
    assert expected["ITR"]["R@5"] == pytest.approx(np.mean(np.array(itr) <= 5))
    strict = full_catalog_ranks(scores)
    assert expected["strict"] == {"ITR": strict["ITR"], "TIR": strict["TIR"]}
    assert expected["ITR"] != strict["ITR"] and expected["TIR"] != strict["TIR"]  # groups matter
    asked = []

    def score_rows(start, stop):
        asked.append(stop - start)
        return scores[start:stop]

    n_chunks = -(-n // chunk_rows)
    assert full_catalog_ranks_chunked(score_rows, n, groups, chunk_rows) == expected
    assert len(asked) == 2 * n_chunks and max(asked) <= chunk_rows  # two passes
    asked.clear()
    one_pass = full_catalog_ranks_chunked(score_rows, n, groups, chunk_rows,
                                          score_pairs=lambda i, t: scores[i, t])
    assert one_pass == expected and len(asked) == n_chunks
    plain = full_catalog_ranks_chunked(score_rows, n, chunk_rows=chunk_rows)
    assert plain == full_catalog_ranks(scores)
    with pytest.raises(ValueError, match="must return shape"):
        full_catalog_ranks_chunked(lambda a, b: scores[a:b, :-1], n, groups, chunk_rows)


def test_evaluate_retrieval_counts_same_titles_as_hits():
    import torch

    from kaleido.data.catalog import Product
    from kaleido.evaluation.evaluate import EvalConfig, evaluate_retrieval

    # 40 products, pairs of twins in one subcategory; the model scores 1 exactly when the
    # titles match, so it is perfect up to the titles and must score SumR = 600 on KB-101
    products = [Product(id=str(i), title=f"Dress {i // 2}" if i < 20 else f"Top {i}", images=("x",),
                        category="C", subcategory="s" if i < 30 else "t") for i in range(40)]
    codes = np.array([int(p.title.split()[1]) for p in products])

    class Pairs:
        def __init__(self):
            self.products = products

        def __len__(self):
            return len(products)

        def batch(self, images, texts):
            return {"images": torch.as_tensor(np.asarray(images)),
                    "texts": torch.as_tensor(np.asarray(texts))}

    class Task:
        def eval(self):
            return self

        def to(self, device):
            return self

        def score(self, batch):
            same = codes[batch["images"].numpy()] == codes[batch["texts"].numpy()]
            return torch.as_tensor(same).float()

    cfg = EvalConfig(kb101=KB101Config(queries=40, negatives=20, draws=2), full_catalog=40,
                     batch_size=256, device="cpu")
    out = evaluate_retrieval(Task(), Pairs(), cfg)
    assert out["SumR"] == pytest.approx(600.0)
    assert out["same_title_excluded"] == 2 * 20  # 20 twins, each excluded once per draw
    assert "40 same-title products excluded" in out["sampling"]
    full = out["full_catalog"]
    assert full["products"] == 40 and full["same_title_products"] == 20
    assert full["ITR"]["R@1"] == full["TIR"]["R@1"] == 1.0
    # strict: a twin ties with the true pair and ties are pessimistic
    assert full["strict"]["ITR"]["R@1"] == full["strict"]["TIR"]["R@1"] == 0.5
    assert out["pairs_scored"] <= 40 * 40 + 2 * 40 * 21 * 2


def test_itm_accuracy_threshold_free_figures_ignore_the_offset_a_softmax_leaves_free():
    """A constant shift of every match log-odds (free under a 1-in-G softmax) changes the
    sign accuracy but neither the pairwise accuracy nor the AUC; the AUC is sklearn's."""
    from types import SimpleNamespace

    from sklearn.metrics import roc_auc_score

    from kaleido.evaluation.itm import itm_accuracy, itm_negatives, roc_auc

    products = [SimpleNamespace(title=f"t{i}", subcategory="s" + str(i % 3), category="c") for i in range(30)]
    neg = itm_negatives(products)
    rng = np.random.default_rng(0)
    quality = rng.normal(size=30)

    class Scorer:
        def __init__(self, shift):
            self.shift = shift

        def score(self, images, texts):  # true pairs score higher on average
            return np.where(images == texts, 1.0, 0.0) + quality[texts] + self.shift

    low, high = itm_accuracy(Scorer(-5.0).score, products), itm_accuracy(Scorer(5.0).score, products)
    assert low["positive_accuracy"] == 0.0 and high["negative_accuracy"] == 0.0
    assert low["accuracy"] == high["accuracy"] == 0.5
    assert low["pairwise_accuracy"] == high["pairwise_accuracy"] > 0.5
    assert low["auc"] == pytest.approx(high["auc"])
    pos = Scorer(0.0).score(np.arange(30), np.arange(30))
    negs = Scorer(0.0).score(np.arange(30), neg)
    assert low["auc"] == pytest.approx(roc_auc_score(np.r_[np.ones(30), np.zeros(30)], np.r_[pos, negs]))
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5          # ties count half
