"""Caption metrics with the standard COCO caption scorer (pycocoevalcap).

BLEU-1..4, METEOR, ROUGE-L and CIDEr, on ``{id: [reference, ...]}`` and
``{id: [hypothesis]}``. Captions are tokenised with pycocoevalcap's Stanford
PTBTokenizer and METEOR runs the METEOR 1.5 jar, both of which need Java. Without
``java`` on PATH the captions are tokenised with :func:`simple_tokenize` (lowercase,
punctuation removed) and METEOR is reported as ``None``, never as 0.
"""

from __future__ import annotations

import logging
import re
import shutil
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

#: Stand-in for an empty hypothesis: ROUGE-L divides by the hypothesis length, and a
#: word that matches no reference scores an empty caption as what it is.
EMPTY_HYPOTHESIS = "<empty>"

_PUNCT = re.compile(r"[^\w\s]|_")


def java_available() -> bool:
    """Whether ``java`` is on PATH (PTBTokenizer and METEOR need it)."""
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _as_lists(captions: Mapping, name: str) -> dict[str, list[str]]:
    out = {}
    for key, value in captions.items():
        items = [value] if isinstance(value, str) else list(value)
        if not items or not all(isinstance(s, str) for s in items):
            raise ValueError(f"{name}[{key!r}] must be a string or a non-empty list of strings")
        out[str(key)] = items
    return out


def tokenize_captions(captions: Mapping[str, Sequence[str]], use_java: bool) -> dict[str, list[str]]:
    """Tokenise ``{id: [caption, ...]}`` with the PTBTokenizer (Java) or :func:`simple_tokenize`."""
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def caption_scores(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str] | str],
                   *, meteor: bool = True) -> dict[str, float | None]:
    """COCO caption metrics of hypotheses against references.

    Args:
        refs: ``{id: [reference caption, ...]}`` (raw text).
        hyps: ``{id: [hypothesis]}`` or ``{id: hypothesis}`` (raw text), same ids.
        meteor: compute METEOR (slowest metric; needs Java).

    Returns:
        ``{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr": score}`` as the scorers give
        them (fractions, CIDEr unscaled); METEOR is None without Java or when disabled.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = _as_lists(refs, "refs"), _as_lists(hyps, "hyps")
    if refs.keys() != hyps.keys():
        missing, extra = sorted(refs.keys() - hyps.keys()), sorted(hyps.keys() - refs.keys())
        raise ValueError(f"refs and hyps must have the same ids; "
                         f"missing hyps {missing[:5]}, hyps without refs {extra[:5]}")
    if any(len(h) != 1 for h in hyps.values()):
        raise ValueError("give exactly one hypothesis per id")
    if not refs:
        raise ValueError("no captions to score")
    use_java = java_available()
    if not use_java:
        log.warning("METEOR unavailable: Java not found (PTBTokenizer replaced by a simple "
                    "lowercase/punctuation tokenizer)")
    gts, res = tokenize_captions(refs, use_java), tokenize_captions(hyps, use_java)
    empty = [k for k, v in res.items() if not v[0].strip()]
    if empty:
        log.warning("%d empty hypotheses scored as %r, e.g. %s", len(empty), EMPTY_HYPOTHESIS,
                    empty[:3])
        for k in empty:
            res[k] = [EMPTY_HYPOTHESIS]
    gts = {k: [r if r.strip() else EMPTY_HYPOTHESIS for r in v] for k, v in gts.items()}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: dict[str, float | None] = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["METEOR"] = _meteor(gts, res) if (meteor and use_java) else None
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: scores[k] for k in METRICS}


def _meteor(gts, res) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        # Meteor's __del__ also does this, but only when the GC runs; do not leak the JVM.
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.wait()


def bleu4(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str] | str]) -> float:
    """BLEU-4 with the simple tokenizer and no Java: cheap enough for every epoch."""
    from pycocoevalcap.bleu.bleu import Bleu

    refs, hyps = _as_lists(refs, "refs"), _as_lists(hyps, "hyps")
    gts = {k: [simple_tokenize(r) for r in v] for k, v in refs.items()}
    res = {k: [simple_tokenize(v[0]) or EMPTY_HYPOTHESIS] for k, v in hyps.items()}
    return float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def format_scores(scores: Mapping[str, float | None]) -> str:
    """One line per metric, ``None`` shown as ``n/a``."""
    return "\n".join(f"{k:8s} {'n/a' if v is None else f'{v:.4f}'}" for k, v in scores.items())
