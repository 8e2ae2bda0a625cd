"""ViLT's word-patch alignment (WPA): an optimal-transport distance between the words and the
patches of a pair, computed on the ITM pass, pulled down for true pairs and pushed up for
negatives.

Kim et al. 2021 (ViLT, section 3.2, after UNITER): the cost of moving word ``i`` to patch
``j`` is ``1 - cos(t_i, v_j)`` of their output states; the transport plan comes from the
inexact proximal point method (IPOT, Xie et al. 2020) with uniform marginals, and is held
fixed (no gradient), so the gradient flows through the cost only. The loss is
``(sum of true-pair distances - sum of negative distances) / pairs``; ViLT weights it 0.1.
[CLS] and [SEP] are not words, padding is neither words nor patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kaleido.model.modeling import KaleidoBertOutput


@torch.no_grad()
def ipot(cost: torch.Tensor, x_pad: torch.Tensor, y_pad: torch.Tensor, beta: float = 0.5,
         iterations: int = 50, k: int = 1) -> torch.Tensor:
    """The IPOT transport plan between two sets with uniform weights.

    Args:
        cost: (B, M, N) transport costs (padding rows / columns are ignored).
        x_pad: (B, M) True where a row is padding; y_pad: (B, N) the same for columns.
        beta: the proximal step (ViLT: 0.5); iterations / k: outer and inner (Sinkhorn) steps.

    Returns:
        (B, M, N) plan: row sums 1/M_real, column sums 1/N_real (approximately, after
        ``iterations``), zero on padding.
    """
    b, m, n = cost.shape
    cost = cost.float()
    joint = x_pad[:, :, None] | y_pad[:, None, :]                    # (B, M, N)
    x_len = (~x_pad).sum(1).clamp(min=1).float()[:, None]             # (B, 1)
    y_len = (~y_pad).sum(1).clamp(min=1).float()[:, None]
    a = torch.exp(-cost / beta).masked_fill(joint, 0)
    plan = torch.ones_like(cost).masked_fill(joint, 0)
    sigma = torch.full((b, m), 1.0, device=cost.device) / x_len
    sigma = sigma.masked_fill(x_pad, 0)
    big = 1e4  # keeps 1 / (...) finite on padding; those entries are masked out of the plan
    for _ in range(iterations):
        q = a * plan                                                  # (B, M, N)
        for _ in range(k):
            delta = 1.0 / (y_len * torch.einsum("bmn,bm->bn", q, sigma) + big * y_pad)   # (B, N)
            sigma = 1.0 / (x_len * torch.einsum("bmn,bn->bm", q, delta) + big * x_pad)   # (B, M)
        plan = sigma[:, :, None] * q * delta[:, None, :]
    return plan.masked_fill(joint, 0)


def wpa_distance(out: KaleidoBertOutput, attention_mask: torch.Tensor, beta: float = 0.5,
                 iterations: int = 50) -> torch.Tensor:
    """(B,) optimal-transport distance between each pair's words and patches.

    Args:
        out: the encoder outputs of the pairs (text then patches).
        attention_mask: (B, T) the text's mask (1 = real token, [CLS] and [SEP] included).
    """
    text, patches = out.text_hidden.float(), out.patch_hidden.float()
    words = attention_mask.bool().clone()
    words[:, 0] = False                                               # [CLS]
    last = attention_mask.long().sum(1) - 1
    words[torch.arange(len(words), device=words.device), last.clamp(min=0)] = False   # [SEP]
    t = out.text_length
    real_patches = out.keys[:, t:] if out.keys is not None else torch.ones(
        patches.shape[:2], dtype=torch.bool, device=patches.device)
    cost = 1 - F.normalize(text, dim=-1) @ F.normalize(patches, dim=-1).transpose(1, 2)  # (B, T, P)
    x_pad, y_pad = ~words, ~real_patches
    cost = cost.masked_fill(x_pad[:, :, None] | y_pad[:, None, :], 0)
    plan = ipot(cost.detach(), x_pad, y_pad, beta, iterations)
    return (cost * plan).sum(dim=(1, 2))


class WPAHead(nn.Module):
    """The word-patch alignment loss of the ITM pass (no parameters): reads ``itm_labels`` and
    the text's ``attention_mask`` of the same pairs."""

    name = "wpa"

    def __init__(self, beta: float = 0.5, iterations: int = 50):
        super().__init__()
        self.beta, self.iterations = beta, iterations

    def forward(self, out: KaleidoBertOutput, batch: dict) -> dict[str, torch.Tensor]:
        distance = wpa_distance(out, batch["attention_mask"], self.beta, self.iterations)
        labels = batch["itm_labels"]
        sign = torch.where(labels == 1, 1.0, -1.0).to(distance.device)
        loss = (sign * distance).sum() / len(distance)
        gap = distance.new_zeros(())  # mean negative distance - mean true-pair distance (the logs)
        if (labels == 0).any() and (labels == 1).any():
            gap = distance[labels == 0].mean() - distance[labels == 1].mean()
        return {"wpa_loss": loss, "wpa_gap": gap.detach()}
