import logging

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from sat_captioner.metrics import METRICS, bleu4, caption_scores, java_available

# Already lowercase, punctuation-free and space-separated: both tokenizers leave them alone.
REFS = {
    "1": ["puma men black polo tshirts"],
    "2": ["nike women red running shoes", "nike red shoes for women"],
    "3": ["levis men blue slim fit jeans"],
    "4": ["fastrack unisex black analog watch"],
}
HYPS = {
    "1": ["puma men black tshirts"],
    "2": ["nike women red casual shoes"],
    "3": ["levis men blue jeans"],
    "4": ["titan women silver watch"],
}


def _direct() -> dict:
    bleu, _ = Bleu(4).compute_score(REFS, HYPS, verbose=0)
    direct = {f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}
    direct["ROUGE-L"] = Rouge().compute_score(REFS, HYPS)[0]
    direct["CIDEr"] = Cider().compute_score(REFS, HYPS)[0]
    return direct


def _assert_same_as_direct(scores: dict) -> None:
    assert list(scores) == list(METRICS)
    for key, value in _direct().items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < scores["BLEU-4"] < scores["BLEU-1"] < 1 and scores["CIDEr"] > 0


@pytest.mark.skipif(not java_available(), reason="java not on PATH")
def test_scores_with_java_equal_the_pycocoevalcap_scorers():
    scores = caption_scores(REFS, {k: v[0] for k, v in HYPS.items()})
    _assert_same_as_direct(scores)
    assert isinstance(scores["METEOR"], float) and 0 < scores["METEOR"] < 1


def test_without_java_meteor_is_none_and_the_rest_unchanged(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    assert not java_available()
    with caplog.at_level(logging.WARNING):
        scores = caption_scores(REFS, HYPS)
    assert scores["METEOR"] is None
    assert "METEOR unavailable: Java not found" in caplog.text
    _assert_same_as_direct(scores)
    assert bleu4(REFS, HYPS) == pytest.approx(scores["BLEU-4"], abs=1e-12)


def test_simple_tokenizer_strips_punctuation_and_case(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    noisy = {k: [v[0].upper().replace(" ", ", ") + "."] for k, v in HYPS.items()}
    assert caption_scores(REFS, noisy, meteor=False) == caption_scores(REFS, HYPS, meteor=False)


def test_mismatched_ids_and_empty_hypotheses(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="same ids"):
        caption_scores(REFS, {"1": "x"})
    scores = caption_scores(REFS, {**HYPS, "4": ""})  # ROUGE-L would divide by zero
    assert scores["BLEU-1"] < _direct()["BLEU-1"]
