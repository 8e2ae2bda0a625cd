"""Alignment Guided Masking (AGM) and the random-masking ablation.

A plan says which text tokens and which kaleido patches of one sample are masked:

* AGM (DESIGN.md stage 5) visits the pre-aligned ``(tokens, patch)`` pairs in a random
  order and masks *either* the tokens *or* the patch of each pair, never both sides of
  any pair, so the model must recover each masked side from the other modality. When
  the pairs run out, the token budget and the per-level patch quotas are filled at
  random with tokens and patches that are not blocked by a masked partner.
* ``random`` (FashionBERT-style ablation) ignores the alignments.

Tokens are masked by whole words (ViLT) unless ``whole_word`` is off. Everything here is
a pure function of its inputs and an explicit ``np.random.Generator``; it runs in the
dataset / collate step, never inside a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

#: Masking strategies understood by :func:`plan_masks`.
STRATEGIES = ("agm", "random")

#: Label value of positions that are not predicted (PyTorch's cross-entropy ignore index).
IGNORE_INDEX = -100


@dataclass
class MaskingConfig:
    """How tokens and patches are chosen for masking.

    Attributes:
        strategy: ``agm`` (alignment guided, the paper) or ``random`` (the ablation:
            FashionBERT-style random masking that ignores alignments).
        whole_word: mask all WordPieces of a word together (ViLT); False masks single tokens.
        token_ratio: share of the text's maskable tokens to mask (at least 1 token when the
            text has any).
        mask_levels: grid sizes whose patches are masked (the paper: levels 3, 4, 5).
        patches_per_level: how many patches are masked on each of ``mask_levels``
            (the paper's 1 / 2 / 3).
        mask_prob: share of the chosen tokens replaced by ``[MASK]``.
        random_prob: share of the chosen tokens replaced by a random non-special token;
            the rest (``1 - mask_prob - random_prob``) stay unchanged.
    """

    strategy: str = "agm"
    whole_word: bool = True
    token_ratio: float = 0.15
    mask_levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    patches_per_level: list[int] = field(default_factory=lambda: [1, 2, 3])
    mask_prob: float = 0.8
    random_prob: float = 0.1


@dataclass
class MaskPlan:
    """Which tokens and patches of one sample are masked.

    Attributes:
        tokens: (n,) int64 sorted positions to mask in the token sequence ``[CLS] text [SEP]``.
        patches: ``{level: (k,) int64}`` sorted global patch indices to mask per level
            (exactly ``patches_per_level`` of them on each masked level).
        aligned_tokens: how many of the masked tokens came from aligned pairs.
        aligned_patches: how many of the masked patches came from aligned pairs.
    """

    tokens: np.ndarray
    patches: dict[int, np.ndarray]
    aligned_tokens: int = 0
    aligned_patches: int = 0

    @property
    def all_patches(self) -> np.ndarray:
        """(K,) int64 sorted global indices of every masked patch, all levels together."""
        if not self.patches:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(list(self.patches.values())))


# --------------------------------------------------------------------------- helpers


def word_groups(word_ids: Sequence[int | None]) -> list[tuple[int, ...]]:
    """Group token positions by word, from a fast tokenizer's ``encoding.word_ids()``.

    A group is a run of consecutive tokens with the same word id, so a text pair (whose
    word ids restart at 0) still gives separate groups. Special tokens (``None``) belong
    to no group and are never masked.

    Args:
        word_ids: one entry per token: the word index, or None for special tokens.

    Returns:
        Token-position tuples, one per word, in text order.
    """
    groups: list[list[int]] = []
    prev = None
    for pos, wid in enumerate(word_ids):
        if wid is None:
            prev = None
            continue
        if prev is None or wid != prev:
            groups.append([])
        groups[-1].append(pos)
        prev = wid
    return [tuple(g) for g in groups]


def token_budget(num_tokens: int, ratio: float) -> int:
    """How many tokens to mask: ``max(1, round(ratio * num_tokens))``, 0 for an empty text."""
    if num_tokens <= 0:
        return 0
    return min(num_tokens, max(1, int(round(ratio * num_tokens))))


def _check_config(cfg: MaskingConfig, levels: dict[int, slice]) -> dict[int, int]:
    """Validate ``cfg`` against ``levels``; return the patch quota of each masked level."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {cfg.strategy!r}; expected one of {STRATEGIES}")
    if not 0.0 <= cfg.token_ratio <= 1.0:
        raise ValueError(f"masking token_ratio must be in [0, 1], got {cfg.token_ratio}")
    if len(cfg.mask_levels) != len(cfg.patches_per_level):
        raise ValueError(
            f"masking mask_levels {cfg.mask_levels} and patches_per_level "
            f"{cfg.patches_per_level} must have the same length"
        )
    quotas = {}
    for level, k in zip(cfg.mask_levels, cfg.patches_per_level):
        if level not in levels:
            raise ValueError(f"masking level {level} is not among the patch levels {sorted(levels)}")
        size = levels[level].stop - levels[level].start
        if not 0 <= k <= size:
            raise ValueError(f"cannot mask {k} patches on level {level}, which has {size}")
        quotas[level] = int(k)
    return quotas


def _groups(words: Iterable[Sequence[int]], whole_word: bool) -> list[tuple[int, ...]]:
    """The maskable units: whole words, or single tokens when ``whole_word`` is off."""
    groups = [tuple(int(t) for t in w) for w in words if len(w)]
    if not whole_word:
        groups = [(t,) for g in groups for t in g]
    return groups


def _as_pair(pair) -> tuple[tuple[int, ...], int]:
    """Accept ``(tokens, patch)`` tuples or :class:`AlignedPair`-like objects."""
    if hasattr(pair, "tokens") and hasattr(pair, "patch"):
        return tuple(int(t) for t in pair.tokens), int(pair.patch)
    tokens, patch = pair
    return tuple(int(t) for t in tokens), int(patch)


def _plan(groups, masked_groups, patches_by_level, aligned_tokens, aligned_patches) -> MaskPlan:
    tokens = sorted(t for g in masked_groups for t in groups[g])
    return MaskPlan(
        tokens=np.asarray(tokens, dtype=np.int64),
        patches={lv: np.asarray(sorted(ps), dtype=np.int64) for lv, ps in patches_by_level.items()},
        aligned_tokens=int(aligned_tokens),
        aligned_patches=int(aligned_patches),
    )


def _random_patches(quotas, levels, rng) -> dict[int, list[int]]:
    out = {}
    for level, k in quotas.items():
        s = levels[level]
        out[level] = [int(p) for p in rng.choice(np.arange(s.start, s.stop), size=k, replace=False)]
    return out


# --------------------------------------------------------------------------- strategies


def random_mask(words: Sequence[Sequence[int]], levels: dict[int, slice],
                rng: np.random.Generator, cfg: MaskingConfig) -> MaskPlan:
    """Random masking that ignores alignments (the FashionBERT-style ablation).

    Args:
        words: token-position groups of the text's words (see :func:`word_groups`).
        levels: ``{level: slice}`` of the patch sequence (from ``level_slices``).
        rng: the random generator (the only source of randomness).
        cfg: budget, quotas, whole-word switch.

    Returns:
        A plan with at least ``token_budget`` tokens (at most one word more) and exactly
        the quota of patches on each masked level.
    """
    quotas = _check_config(cfg, levels)
    groups = _groups(words, cfg.whole_word)
    n_mask = token_budget(sum(len(g) for g in groups), cfg.token_ratio)
    masked, count = [], 0
    for g in rng.permutation(len(groups)):
        if count >= n_mask:
            break
        masked.append(int(g))
        count += len(groups[g])
    return _plan(groups, masked, _random_patches(quotas, levels, rng), 0, 0)


def alignment_guided_mask(words: Sequence[Sequence[int]], pairs: Sequence, levels: dict[int, slice],
                          rng: np.random.Generator, cfg: MaskingConfig) -> MaskPlan:
    """Alignment Guided Masking: mask one side of each pre-aligned pair, then fill at random.

    The aligned pairs are visited in a random order; a fair coin picks the side to mask
    (the pair's tokens, as whole words, or its patch). A side is possible when

    * tokens: the token budget is not reached and the pair has a word that is unmasked and
      not aligned (through any pair) to a masked patch; those free words are masked, in
      order, until the budget is reached;
    * patch: its level is masked and its quota is not full, the patch is not masked yet,
      and none of the words aligned to it (through any pair) is masked.

    When the coin's side is impossible the other side is tried, else the pair is skipped.
    A side is also refused when taking it would leave too few unblocked words to reach the
    token budget, or too few unblocked patches to fill a level's quota, so the random
    fill below always completes without breaking the rule. The fill then adds random
    unblocked whole words until the budget is reached, then random unblocked patches up
    to each quota.

    Guarantees: no aligned pair has both its patch and any of its tokens masked; each
    masked level gets exactly its quota; at least ``token_budget`` tokens are masked
    and at most one word more. The one exception, only possible for degenerate inputs
    (nearly every word aligned to nearly every patch of a level): when the words needed
    for the budget leave a level fewer unblocked patches than its quota, the level is
    completed with blocked patches, i.e. exact quotas win over the both-sides rule.

    Args:
        words: token-position groups of the text's words (see :func:`word_groups`); with
            ``cfg.whole_word`` False every token is its own group.
        pairs: aligned pairs, each ``(token_positions, global_patch_index)`` or an
            ``AlignedPair``. Token positions outside every group (special tokens,
            truncated text) are ignored; a patch on a level that is not masked is never
            taken (the pair can still give its tokens).
        levels: ``{level: slice}`` of the patch sequence (from ``level_slices``).
        rng: the random generator (the only source of randomness).
        cfg: budget, quotas, whole-word switch.

    Returns:
        The :class:`MaskPlan`, with ``aligned_tokens`` / ``aligned_patches`` counting what
        came from pairs rather than from the random fill.
    """
    quotas = _check_config(cfg, levels)
    groups = _groups(words, cfg.whole_word)
    n_mask = token_budget(sum(len(g) for g in groups), cfg.token_ratio)
    group_of = {t: i for i, g in enumerate(groups) for t in g}
    level_of = {p: lv for lv in quotas for p in range(levels[lv].start, levels[lv].stop)}

    # Each pair as (groups of its tokens, patch); the alignment graph in both directions.
    norm = []
    group_patches: list[set[int]] = [set() for _ in groups]  # patches aligned to each word
    patch_groups: dict[int, set[int]] = {}  # words aligned to each patch
    for pair in pairs:
        tokens, patch = _as_pair(pair)
        gs = sorted({group_of[t] for t in tokens if t in group_of})
        norm.append((gs, patch))
        for g in gs:
            group_patches[g].add(patch)
        patch_groups.setdefault(patch, set()).update(gs)

    masked_groups: set[int] = set()
    masked_patches: dict[int, list[int]] = {lv: [] for lv in quotas}
    masked_patch_set: set[int] = set()
    n_tokens = 0

    def group_free(g: int) -> bool:  # word unmasked and not aligned to a masked patch
        return g not in masked_groups and not (group_patches[g] & masked_patch_set)

    def patch_free(p: int) -> bool:  # patch unmasked and no aligned word masked
        return p not in masked_patch_set and not (patch_groups.get(p, set()) & masked_groups)

    def tokens_reachable(extra_blocked: set[int]) -> bool:
        free = sum(len(groups[g]) for g in range(len(groups)) if group_free(g) and g not in extra_blocked)
        return n_tokens + free >= n_mask

    def quotas_reachable(extra_blocked: set[int]) -> bool:
        for lv, k in quotas.items():
            s = levels[lv]
            free = sum(1 for p in range(s.start, s.stop) if patch_free(p) and p not in extra_blocked)
            if len(masked_patches[lv]) + free < k:
                return False
        return True

    def blocked_by(new_groups: list[int]) -> set[int]:
        return set().union(*(group_patches[g] for g in new_groups)) if new_groups else set()

    def words_to_add(gs: list[int]) -> list[int]:  # the pair's free words, up to the budget
        out, count = [], n_tokens
        for g in gs:
            if count >= n_mask:
                break
            if group_free(g):
                out.append(g)
                count += len(groups[g])
        return out

    aligned_tokens = aligned_patches = 0
    for i in rng.permutation(len(norm)):
        gs, patch = norm[i]
        want_tokens = bool(rng.random() < 0.5)
        new = words_to_add(gs)
        can_tokens = bool(new) and quotas_reachable(blocked_by(new))
        lv = level_of.get(patch)
        can_patch = (
            lv is not None and len(masked_patches[lv]) < quotas[lv] and patch_free(patch)
            and tokens_reachable(patch_groups.get(patch, set()))
        )
        if can_tokens and (want_tokens or not can_patch):
            masked_groups.update(new)
            added = sum(len(groups[g]) for g in new)
            n_tokens += added
            aligned_tokens += added
        elif can_patch:
            masked_patches[lv].append(patch)
            masked_patch_set.add(patch)
            aligned_patches += 1

    # Random fill: words first (keeping every quota reachable when possible), then patches.
    order = [int(g) for g in rng.permutation(len(groups))]
    for strict in (True, False):
        for g in order:
            if n_tokens >= n_mask:
                break
            if group_free(g) and (not strict or quotas_reachable(group_patches[g])):
                masked_groups.add(g)
                n_tokens += len(groups[g])
    for lv, k in quotas.items():
        s = levels[lv]
        need = k - len(masked_patches[lv])
        if need <= 0:
            continue
        free = [p for p in range(s.start, s.stop) if patch_free(p)]
        picked = [free[j] for j in rng.choice(len(free), size=min(need, len(free)), replace=False)]
        if len(picked) < need:  # degenerate input only: exact quotas win, see the docstring
            rest = [p for p in range(s.start, s.stop) if p not in masked_patch_set and p not in picked]
            picked += [rest[j] for j in rng.choice(len(rest), size=need - len(picked), replace=False)]
        masked_patches[lv].extend(picked)
        masked_patch_set.update(picked)
    return _plan(groups, masked_groups, masked_patches, aligned_tokens, aligned_patches)


def plan_masks(words: Sequence[Sequence[int]], pairs: Sequence, levels: dict[int, slice],
               rng: np.random.Generator, cfg: MaskingConfig) -> MaskPlan:
    """Pick the masking strategy named by ``cfg.strategy`` (``agm`` or ``random``).

    Args:
        words: token-position groups of the text's words.
        pairs: aligned pairs (ignored by ``random``).
        levels: ``{level: slice}`` of the patch sequence.
        rng: the random generator.
        cfg: the masking config.

    Returns:
        The :class:`MaskPlan`.

    Raises:
        ValueError: unknown strategy or a config that does not fit ``levels``.
    """
    if cfg.strategy == "agm":
        return alignment_guided_mask(words, pairs, levels, rng, cfg)
    if cfg.strategy == "random":
        return random_mask(words, levels, rng, cfg)
    raise ValueError(f"unknown masking strategy {cfg.strategy!r}; expected one of {STRATEGIES}")


# --------------------------------------------------------------------------- token ids


def mask_tokens(input_ids: np.ndarray, positions: np.ndarray, rng: np.random.Generator, mask_id: int,
                vocab_size: int, special_ids, cfg: MaskingConfig) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80 / 10 / 10 corruption of the chosen token positions.

    Args:
        input_ids: (L,) token ids of ``[CLS] text [SEP]`` (not modified).
        positions: (n,) positions to corrupt and predict (e.g. ``MaskPlan.tokens``).
        rng: the random generator.
        mask_id: id of ``[MASK]``.
        vocab_size: size of the vocabulary; random replacements are drawn from
            ``[0, vocab_size)`` excluding ``special_ids``.
        special_ids: ids never used as random replacements ([PAD], [CLS], [SEP], [MASK], ...).
        cfg: ``mask_prob`` and ``random_prob``.

    Returns:
        ``(masked_ids, labels)``, both (L,) int64: the corrupted ids, and the original id at
        each chosen position with ``-100`` elsewhere.
    """
    if not (0.0 <= cfg.mask_prob and 0.0 <= cfg.random_prob and cfg.mask_prob + cfg.random_prob <= 1.0):
        raise ValueError(
            f"mask_prob ({cfg.mask_prob}) and random_prob ({cfg.random_prob}) must be >= 0 "
            "and sum to at most 1"
        )
    ids = np.asarray(input_ids, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    masked = ids.copy()
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    if positions.size == 0:
        return masked, labels
    labels[positions] = ids[positions]
    u = rng.random(positions.size)
    masked[positions[u < cfg.mask_prob]] = mask_id
    rand_pos = positions[(u >= cfg.mask_prob) & (u < cfg.mask_prob + cfg.random_prob)]
    if rand_pos.size:
        masked[rand_pos] = random_token_ids(rand_pos.size, vocab_size, special_ids, rng)
    return masked, labels


def random_token_ids(n: int, vocab_size: int, special_ids, rng: np.random.Generator) -> np.ndarray:
    """(n,) int64 ids drawn uniformly from ``[0, vocab_size)`` minus ``special_ids``.

    Rejection sampling: special ids are a handful out of ~30k, so one redraw round is
    nearly always enough.
    """
    special = np.unique(np.asarray(list(special_ids), dtype=np.int64))
    special = special[(special >= 0) & (special < vocab_size)]
    if special.size >= vocab_size:
        raise ValueError(f"no non-special token id in a vocabulary of {vocab_size}")
    out = rng.integers(0, vocab_size, size=n)
    bad = np.isin(out, special)
    while bad.any():
        out[bad] = rng.integers(0, vocab_size, size=int(bad.sum()))
        bad = np.isin(out, special)
    return out.astype(np.int64)
