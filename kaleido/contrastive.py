"""Image-text contrastive pieces shared by the linear reference, Kaleido-BERT's ITC head and
hard-negative mining.

Titles repeat (about a third of the products share their exact title with another), so a
product with the same title as the positive is never a negative: ``groups`` gives every row
a group id (e.g. a title code) and same-group off-diagonal pairs are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kaleido.evaluation.kb101 import title_codes  # noqa: F401  (the one rule for "same title")


def same_group_mask(groups: torch.Tensor | None, n: int, device=None) -> torch.Tensor:
    """(N, N) bool: True where ``i != j`` share a group (those pairs are not negatives)."""
    if groups is None:
        return torch.zeros(n, n, dtype=torch.bool, device=device)
    groups = groups.to(device)
    same = groups[:, None] == groups[None, :]
    return same & ~torch.eye(n, dtype=torch.bool, device=device)


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) rows.

    Args:
        image: (B, E) L2-normalised image embeddings.
        text: (B, E) L2-normalised text embeddings; row ``i`` matches image ``i``.
        logit_scale: scalar log of the inverse temperature (learnable; clamped to 100).
        groups: optional (B,) group ids; same-group pairs other than the diagonal are left
            out of the softmax denominators.

    Returns:
        The mean of the image-to-text and text-to-image cross-entropies.
    """
    logits = logit_scale.exp().clamp(max=100.0) * image @ text.t()     # (B, B)
    excluded = same_group_mask(groups, len(logits), logits.device)
    logits = logits.masked_fill(excluded, torch.finfo(logits.dtype).min)
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def sample_hard_negatives(similarity: torch.Tensor, groups: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """One negative column per row, drawn in proportion to ``softmax(similarity / temperature)``
    over the columns that are neither the diagonal nor a same-group twin (ALBEF's mining).

    Args:
        similarity: (B, B) row ``i`` = query ``i`` against every candidate ``j``.
        groups: optional (B,) group ids (same group = not a negative).
        generator: seeded generator for reproducible draws.
        temperature: flattens (> 1) or sharpens (< 1) the sampling distribution.

    Returns:
        (B,) int64 column indices; a row with no eligible column gets a random other column.
    """
    n = similarity.shape[0]
    eligible = ~(same_group_mask(groups, n, similarity.device)
                 | torch.eye(n, dtype=torch.bool, device=similarity.device))
    weights = torch.softmax(similarity.detach().float() / temperature, dim=1) * eligible
    empty = weights.sum(1) <= 0
    if empty.any():  # everything is a twin: fall back to any other column
        weights[empty] = (~torch.eye(n, dtype=torch.bool, device=similarity.device))[empty].float()
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def hardest_negatives(sim: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B,) the most similar column of each row that is neither the diagonal nor a twin
    (a random-free choice; ties and an all-zero similarity take the first eligible column)."""
    n = len(sim)
    excluded = same_group_mask(groups, n, sim.device) | torch.eye(n, dtype=torch.bool, device=sim.device)
    if bool(excluded.all(1).any()):  # a row of twins only: allow any other column
        excluded = torch.eye(n, dtype=torch.bool, device=sim.device)
    return sim.masked_fill(excluded, float("-inf")).argmax(1)
