"""The alignment generator on hand-made heat maps and patches, the store, the measures."""

import json

import numpy as np
import pytest

from kaleido.alignment import AlignmentConfig, align_product, load_alignments, patch_scores
from kaleido.alignment.generator import word_token_positions
from kaleido.alignment.quality import alignment_quality, foreground_fraction
from kaleido.alignment.store import AlignmentWriter, read_records
from kaleido.patches.geometry import level_slices, patch_boxes, patch_positions
from kaleido.tokenizer import load_tokenizer

GRIDS = [1, 2, 3, 4, 5]
S = level_slices(GRIDS)


def _positions(box=(0, 0, 60, 60), size=(60, 60)):
    return patch_positions(patch_boxes(box, GRIDS), size)


def test_patch_scores_are_exact_overlaps():
    heat = np.array([[1.0, 0.0], [0.0, 0.0]])  # all attention in the top-left quarter
    scores = patch_scores(heat, _positions())
    assert scores[S[1]].tolist() == [1.0]
    np.testing.assert_allclose(scores[S[2]], [1, 0, 0, 0])
    np.testing.assert_allclose(scores[S[3]], [4 / 9, 2 / 9, 0, 2 / 9, 1 / 9, 0, 0, 0, 0], atol=1e-6)
    for g in (3, 4, 5):  # each level partitions the image: shares sum to 1
        assert scores[S[g]].sum() == pytest.approx(1.0)
    # patches cut from a box in the right half never see the left-half attention
    right = patch_scores(heat, _positions(box=(30, 0, 60, 60)))
    assert right.max() == 0


def test_words_map_to_wordpiece_positions():
    tok = load_tokenizer()
    spans = word_token_positions("Nike Men Navy Blue T-Shirt", tok, 64)
    # [CLS] nike men navy blue t - shirt [SEP]
    assert spans["navy"] == (3,) and spans["tshirt"] == (5, 6, 7) and spans["nike"] == (1,)
    assert word_token_positions("Blue shirt blue", tok, 64)["blue"] == (1, 3)
    assert "shirt" not in word_token_positions("Blue " * 40 + "shirt", tok, 16)  # truncated


def test_align_product_on_a_known_heat_map():
    tok = load_tokenizer()
    text = "Nike Men Navy Blue T-Shirt"
    words = ["navy", "t-shirt", "the", "jeans", "navy"]
    attention = np.zeros((5, 5, 5))
    attention[0, 4, 4] = 1.0   # navy: bottom-right corner cell of a 5x5 heat grid
    attention[1, 2, 2] = 1.0   # t-shirt: the centre cell
    attention[2:] = 1.0 / 25
    pairs = align_product(words, attention, text, _positions(), GRIDS, tok, AlignmentConfig())
    got = {(p.word, p.level): (p.patch, round(p.score, 4), p.tokens) for p in pairs}
    assert set(got) == {("navy", g) for g in (3, 4, 5)} | {("tshirt", g) for g in (3, 4, 5)}
    assert got[("navy", 5)] == (S[5].start + 24, 1.0, (3,))
    assert got[("navy", 3)] == (S[3].start + 8, 1.0, (3,))
    assert got[("tshirt", 5)] == (S[5].start + 12, 1.0, (5, 6, 7))
    assert got[("tshirt", 3)][0] == S[3].start + 4  # the centre cell of 3x3 holds it all
    with pytest.raises(ValueError, match="not among the patch grids"):
        align_product(words, attention, text, _positions(), GRIDS, tok,
                      AlignmentConfig(levels=[6]))


def test_store_resumes_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "alignments.jsonl"
    pairs = align_product(["navy"], np.ones((1, 2, 2)), "Navy socks", _positions(), GRIDS,
                          load_tokenizer(), AlignmentConfig())
    with AlignmentWriter(path) as w:
        w.write("1", "navy socks", pairs)
        w.write("2", "red socks", [])
    with open(path, "a") as f:
        f.write('{"id": "3", "capt')  # killed mid-write
    assert set(read_records(path)) == {"1", "2"}
    with AlignmentWriter(path) as w:
        assert w.done == {"1", "2"}
        w.write("3", "blue socks", [])
    assert set(read_records(path)) == {"1", "2", "3"}
    loaded = load_alignments(tmp_path)
    assert loaded["1"] == pairs and loaded["2"] == []
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_foreground_measures():
    mask = np.zeros((60, 60))
    mask[:, :30] = 1.0  # left half is the product
    pos = _positions()
    frac = foreground_fraction(mask, pos)
    np.testing.assert_allclose(frac[S[2]], [1, 0, 1, 0])
    np.testing.assert_allclose(frac[S[3]][:3], [1, 0.5, 0])
    records = {"a": {"caption": "x", "pairs": [
        {"word": "navy", "tokens": [1], "level": 3, "patch": S[3].start, "score": 0.5},
        {"word": "navy", "tokens": [1], "level": 5, "patch": S[5].start + 4, "score": 0.2}]},
        "b": {"caption": "y", "pairs": []}}
    q = alignment_quality(records, {"a": pos, "b": pos}, {"a": mask, "b": mask})
    assert q["with_pairs"] == 0.5 and q["pairs_per_product"] == 1.0
    assert q["aligned_on_foreground"] == 0.5  # the 5x5 pick is in the right half
    assert 0.45 < q["all_patches_on_foreground"] < 0.6
    assert q["score_by_level"][4]["mean"] is None and q["score_by_level"][3]["mean"] == 0.5
