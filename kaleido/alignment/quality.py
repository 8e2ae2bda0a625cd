"""How good are the pre-alignments? (The authors call them "very coarse": measure them.)

For a set of products: the share with at least one aligned pair, pairs and aligned words
per product, the mean attention share of the chosen patches against the uniform share
1/g^2, and the share of aligned patches that lie on the saliency foreground, next to
the same share for all patches of those levels (the base rate a random pick would get).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def foreground_fraction(mask: np.ndarray, positions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(P,) share of each patch's pixels whose saliency exceeds ``threshold``.

    Args:
        mask: (H, W) saliency in [0, 1] at the image's size.
        positions: (P, 5) patch positions normalised to the image.
    """
    h, w = mask.shape
    fg = mask > threshold
    integral = np.pad(fg.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    x0 = np.clip(np.floor(positions[:, 0] * w), 0, w - 1).astype(int)
    x1 = np.clip(np.ceil(positions[:, 1] * w), x0 + 1, w).astype(int)
    y0 = np.clip(np.floor(positions[:, 2] * h), 0, h - 1).astype(int)
    y1 = np.clip(np.ceil(positions[:, 3] * h), y0 + 1, h).astype(int)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside / ((x1 - x0) * (y1 - y0))


def alignment_quality(records: dict, positions: dict, masks: dict | None = None,
                      levels=(3, 4, 5), grids=(1, 2, 3, 4, 5), on_foreground: float = 0.5) -> dict:
    """Summary measures of the alignments of the given products.

    Args:
        records: ``{id: {"caption", "pairs": [{"word", "tokens", "level", "patch", "score"}]}}``.
        positions: ``{id: (P, 5) patch positions}``.
        masks: optional ``{id: (H, W) saliency mask}``; enables the foreground measures.
        levels: the aligned levels.
        grids: the patch grids (to find each level's patches).
        on_foreground: a patch is on the foreground when at least this share of it is.

    Returns:
        A JSON-serialisable dict.
    """
    n = len(records)
    pairs_per = [len(r["pairs"]) for r in records.values()]
    words_per = [len({p["word"] for p in r["pairs"]}) for r in records.values()]
    scores = defaultdict(list)
    for r in records.values():
        for p in r["pairs"]:
            scores[p["level"]].append(p["score"])
    out = {
        "products": n,
        "with_pairs": round(sum(k > 0 for k in pairs_per) / n, 4) if n else 0.0,
        "pairs_per_product": round(float(np.mean(pairs_per)), 3) if n else 0.0,
        "words_per_product": round(float(np.mean(words_per)), 3) if n else 0.0,
        "score_by_level": {g: {"mean": round(float(np.mean(scores[g])), 4) if scores[g] else None,
                               "uniform": round(1 / g ** 2, 4)} for g in levels},
        "top_words": _top_words(records),
    }
    if masks:
        starts = np.cumsum([0] + [g * g for g in grids])
        level_patches = np.concatenate([np.arange(starts[grids.index(g)], starts[grids.index(g) + 1])
                                        for g in levels])
        aligned_fg, all_fg = [], []
        for pid, r in records.items():
            if pid not in masks:
                continue
            frac = foreground_fraction(masks[pid], positions[pid])
            all_fg += list(frac[level_patches] >= on_foreground)
            aligned_fg += [frac[p["patch"]] >= on_foreground for p in r["pairs"]]
        out["aligned_on_foreground"] = round(float(np.mean(aligned_fg)), 4) if aligned_fg else None
        out["all_patches_on_foreground"] = round(float(np.mean(all_fg)), 4) if all_fg else None
        out["pairs_measured"] = len(aligned_fg)
    return out


def _top_words(records: dict, k: int = 15) -> dict:
    counts = defaultdict(int)
    for r in records.values():
        for word in {p["word"] for p in r["pairs"]}:
            counts[word] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:k])


def format_quality(q: dict) -> str:
    lines = [f"products            {q['products']:,}",
             f"with >= 1 pair      {q['with_pairs']:.1%}",
             f"pairs / product     {q['pairs_per_product']:.2f} ({q['words_per_product']:.2f} words)"]
    for g, s in q["score_by_level"].items():
        mean = "n/a" if s["mean"] is None else f"{s['mean']:.3f}"
        lines.append(f"level {g} attention share {mean} (uniform {s['uniform']:.3f})")
    if q.get("aligned_on_foreground") is not None:
        lines.append(f"aligned patches on foreground {q['aligned_on_foreground']:.1%} "
                     f"(all level patches: {q['all_patches_on_foreground']:.1%}; "
                     f"{q['pairs_measured']:,} pairs)")
    lines.append("most aligned words: " + ", ".join(f"{w} ({c})" for w, c in q["top_words"].items()))
    return "\n".join(lines)
