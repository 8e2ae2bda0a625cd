"""Word vocabulary of the captioner, built from the train split's titles.

Tokenising: lowercase, then words are maximal runs of letters and digits, where a
single hyphen or apostrophe *between* two such runs stays inside the word. So
``"Puma Men's T-Shirt, 3/4 sleeve!"`` gives ``["puma", "men's", "t-shirt", "3", "4",
"sleeve"]``: digits are kept, every other punctuation mark separates words and is dropped.

Matching words (the alignment generator keeps generated words that also occur in the
product's own text) goes through :func:`normalize_word`, which also drops the inner
hyphen and apostrophe, so ``t-shirt``, ``T-Shirt`` and ``tshirt`` all match.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
_NOT_ALNUM = re.compile(r"[\W_]+")


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """The words of ``text`` with their character offsets: ``(lowercase word, start, end)``.

    ``text[start:end]`` is the word as written; the words are exactly :func:`tokenize`'s.
    """
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words (see the module docstring)."""
    return [w for w, _, _ in word_spans(text)]


def normalize_word(word: str) -> str:
    """The form words are matched in: lowercase, every non-letter/digit removed.

    >>> normalize_word("T-Shirt,")
    'tshirt'
    """
    return _NOT_ALNUM.sub("", word.lower())


class Vocabulary:
    """Word <-> id mapping with ``<pad>=0, <start>=1, <end>=2, <unk>=3``.

    Build it with :meth:`build`, persist it with :meth:`save` / :meth:`load`.
    """

    def __init__(self, words: Sequence[str], min_freq: int = 1):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}
        self.min_freq = min_freq

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Vocabulary of the words occurring at least ``min_freq`` times in ``texts``.

        Words are ordered by decreasing frequency, ties alphabetically (deterministic).

        Args:
            texts: raw captions (titles); tokenised with :func:`tokenize`.
            min_freq: rarer words map to ``<unk>``.
            max_size: keep at most this many words besides the specials.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counts = Counter(w for t in texts for w in tokenize(t))
        kept = sorted((w for w, n in counts.items() if n >= min_freq and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[:max_size]
        return cls(list(SPECIALS) + kept, min_freq=min_freq)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def start_id(self) -> int:
        return self.stoi[START]

    @property
    def end_id(self) -> int:
        return self.stoi[END]

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    def encode(self, text: str | Sequence[str], max_len: int | None = None,
               add_special: bool = True) -> list[int]:
        """Ids of a caption: ``<start> w1 .. wn <end>`` (at most ``max_len`` words).

        Args:
            text: a raw string (tokenised here) or a list of words.
            max_len: truncate to this many words (specials not counted).
            add_special: wrap in ``<start>`` / ``<end>``.
        """
        words = tokenize(text) if isinstance(text, str) else list(text)
        if max_len is not None:
            words = words[:max_len]
        ids = [self.stoi.get(w, self.unk_id) for w in words]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> list[str]:
        """Words of ``ids``; stops at ``<end>`` and drops ``<pad>/<start>`` when stripping.

        ``<unk>`` is kept so the words stay aligned with their attention maps.
        """
        words = []
        for i in ids:
            i = int(i)
            if strip_special and i == self.end_id:
                break
            if strip_special and i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i])
        return words

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON (``{"words": [...], "min_freq": n}``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"words": self.itos, "min_freq": self.min_freq}, indent=0))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(data["words"], min_freq=int(data.get("min_freq", 1)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a vocabulary file ({err})") from err
