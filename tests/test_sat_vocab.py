import pytest

from sat_captioner.vocab import SPECIALS, Vocabulary, normalize_word, tokenize, word_spans


def test_tokenize_keeps_digits_and_inner_hyphens():
    assert tokenize("Puma Men's T-Shirt, 3/4 sleeve! (Blue)") == [
        "puma", "men's", "t-shirt", "3", "4", "sleeve", "blue"]
    assert tokenize("  --  ") == []


def test_word_spans_point_back_into_the_text():
    text = "Nike Men's T-Shirt, Blue"
    spans = word_spans(text)
    assert [w for w, _, _ in spans] == tokenize(text) == ["nike", "men's", "t-shirt", "blue"]
    assert [text[a:b] for _, a, b in spans] == ["Nike", "Men's", "T-Shirt", "Blue"]


def test_normalize_word_matches_spelling_variants():
    assert normalize_word("T-Shirt,") == normalize_word("tshirt") == "tshirt"
    assert normalize_word("Men's") == "mens"


def test_build_encode_decode_save_load(tmp_path):
    vocab = Vocabulary.build(["Red shirt", "red Shoes", "blue shirt red"], min_freq=2)
    assert vocab.itos == [*SPECIALS, "red", "shirt"]  # by frequency; blue/shoes are rare
    ids = vocab.encode("Red blue shirt")
    assert ids == [vocab.start_id, 4, vocab.unk_id, 5, vocab.end_id]
    assert vocab.decode(ids) == ["red", "<unk>", "shirt"]
    assert vocab.encode("red shirt red", max_len=2) == [1, 4, 5, 2]
    assert vocab.decode([4, 2, 5]) == ["red"]  # stops at <end>
    loaded = Vocabulary.load(vocab.save(tmp_path / "v.json"))
    assert loaded.itos == vocab.itos and loaded.min_freq == 2


def test_bad_vocab_file_names_the_file(tmp_path):
    path = tmp_path / "v.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="v.json"):
        Vocabulary.load(path)
    with pytest.raises(ValueError, match="start with"):
        Vocabulary(["a", "b"])
