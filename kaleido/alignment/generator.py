"""From a caption's per-word attention to (text tokens, patch) pre-alignments.

For each product, SAT captions the image and keeps each generated word's attention
map. A generated word is kept when it also occurs in the product's own text (after
:func:`sat_captioner.vocab.normalize_word`); it is mapped to the WordPiece positions of
its occurrences in the model's tokenisation of the text. Its heat map is then
intersected with the kaleido patches of levels 3-5: each patch scores the share of
the word's attention that falls inside it, and the best patch per level is kept.

Everything here is pure (no model calls), so it is tested on hand-made heat maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sat_captioner.vocab import normalize_word, word_spans

#: Function words are never aligned to a patch.
STOPWORDS = ("a", "an", "and", "the", "of", "for", "with", "in", "on", "to", "by", "set", "pack")


@dataclass
class AlignmentConfig:
    """How pre-alignments are picked.

    Attributes:
        levels: grid sizes whose patches words are aligned to (the paper: 3, 4, 5).
        beam_size: SAT beam width when captioning.
        min_score: drop a pair whose patch holds less than this share of the word's
            attention (0 keeps the best patch of every level).
        stopwords: words never aligned.
        tokenizer: the model's tokenizer (``minilm`` = offline default, or a folder).
        max_text_tokens: text length of the model (positions past it are dropped).
    """

    levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    beam_size: int = 3
    min_score: float = 0.0
    stopwords: list[str] = field(default_factory=lambda: list(STOPWORDS))
    tokenizer: str = "minilm"
    max_text_tokens: int = 64


@dataclass(frozen=True)
class AlignedPair:
    """One pre-alignment: text tokens of a word <-> one patch.

    Attributes:
        word: the normalised word.
        tokens: positions of its WordPiece tokens in ``[CLS] text [SEP]`` (all occurrences).
        level: grid size of the patch (3, 4 or 5).
        patch: index of the patch in the full patch sequence (e.g. 0..54 for levels 1..5).
        score: share of the word's attention inside the patch (uniform would be 1 / level^2).
    """

    word: str
    tokens: tuple[int, ...]
    level: int
    patch: int
    score: float


def patch_scores(heat: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Share of an attention map inside each patch, computed exactly.

    The map is piecewise constant over its (h, w) grid laid over the whole image, so a
    patch's share is the overlap-area-weighted sum of the grid cells it covers.

    Args:
        heat: (h, w) non-negative attention over the image (any total).
        positions: (P, 5) patch positions ``[x1, x2, y1, y2, area]`` normalised to the image.

    Returns:
        (P,) shares in [0, 1] (relative to the map's total).
    """
    h, w = heat.shape
    xs = np.linspace(0, 1, w + 1)  # grid cell edges
    ys = np.linspace(0, 1, h + 1)
    # (P, w): overlap of each patch's x-range with each grid column, in units of a column
    ox = np.clip(np.minimum(positions[:, 1:2], xs[1:]) - np.maximum(positions[:, 0:1], xs[:-1]), 0, None) * w
    oy = np.clip(np.minimum(positions[:, 3:4], ys[1:]) - np.maximum(positions[:, 2:3], ys[:-1]), 0, None) * h
    total = float(heat.sum())
    if total <= 0:
        return np.zeros(len(positions))
    return np.einsum("pr,rc,pc->p", oy, heat.astype(np.float64), ox) / total  # (P,)


def word_token_positions(text: str, tokenizer, max_tokens: int) -> dict[str, tuple[int, ...]]:
    """Map each normalised word of ``text`` to its WordPiece positions in ``[CLS] text [SEP]``.

    Words are found with the captioner's tokenisation (so ``T-Shirt`` is one word), then
    every WordPiece whose character span overlaps the word is taken.
    """
    enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_tokens)
    offsets = enc["offset_mapping"]
    out: dict[str, list[int]] = {}
    for word, start, end in word_spans(text):
        key = normalize_word(word)
        hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
        if key and hits:
            out.setdefault(key, []).extend(hits)
    return {k: tuple(sorted(set(v))) for k, v in out.items()}


def align_product(words: list[str], attention: np.ndarray, text: str, positions: np.ndarray,
                  grids: list[int], tokenizer, cfg: AlignmentConfig) -> list[AlignedPair]:
    """Pre-alignments of one product.

    Args:
        words: the generated caption words.
        attention: (T, h, w) attention of each word over the whole image.
        text: the product's own text (title, and description when there is one).
        positions: (P, 5) positions of the product's patches (from the feature cache).
        grids: the grid sizes of those patches, e.g. [1, 2, 3, 4, 5].
        tokenizer: the model's fast tokenizer.
        cfg: which levels, stopwords, thresholds.

    Returns:
        Pairs for each kept word (first occurrence in the caption) and each level.
    """
    spans = word_token_positions(text, tokenizer, cfg.max_text_tokens)
    stop = {normalize_word(s) for s in cfg.stopwords}
    starts = np.cumsum([0] + [g * g for g in grids])
    level_index = {g: i for i, g in enumerate(grids)}
    missing = [g for g in cfg.levels if g not in level_index]
    if missing:
        raise ValueError(f"alignment levels {missing} are not among the patch grids {grids}")
    pairs, seen = [], set()
    for t, word in enumerate(words):
        key = normalize_word(word)
        if not key or key in seen or key in stop or key not in spans:
            continue
        seen.add(key)
        scores = patch_scores(attention[t], positions)
        for g in cfg.levels:
            lo, hi = starts[level_index[g]], starts[level_index[g] + 1]
            best = int(np.argmax(scores[lo:hi]))
            if scores[lo + best] >= cfg.min_score:
                pairs.append(AlignedPair(key, spans[key], g, int(lo + best), float(scores[lo + best])))
    return pairs
