"""Multi-view InfoNCE (ERNIE-ViL 2.0): every (image view, text view) pair is a symmetric InfoNCE
over the batch, with in-batch negatives gathered from every process under torchrun.

Same-title products are not negatives of each other (the KB-101 twin rule of
:func:`kaleido.contrastive.title_codes`); for the attribute view, neither are products with the
same tag text. ``groups`` give each row one or more codes; row ``i`` and column ``j != i`` that
share any code are left out of the softmax denominators (both directions).

Under ``torch.distributed`` each process embeds its own batch; the embeddings are gathered with
``torch.distributed.nn.functional.all_gather`` (gradients flow back to the process that made
them), each process scores its own rows against every column, and DDP's gradient average makes
the update that of one process holding the concatenated batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kaleido.dual.config import DualLossConfig


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each of W processes -> (W*B, ...) in rank order; gradients reach every
    process's own rows. Outside ``torch.distributed`` it returns ``x``."""
    if _world()[1] == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), 0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """:func:`gather_with_grad` for tensors that need no gradient (group codes)."""
    if _world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def _as_columns(groups: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    if groups is None:
        return None
    groups = groups.to(device)
    if groups.ndim == 1:
        groups = groups[:, None]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group rows for a batch of {n}")
    return groups                                                                # (B, K)


def excluded_pairs(row_groups: torch.Tensor, col_groups: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """(B, N) bool: True where local row ``i`` and column ``j`` share a code and ``j`` is not
    row ``i``'s own column ``offset + i``.

    Args:
        row_groups: (B, K) codes of the local rows.
        col_groups: (N, K) codes of every column.
        offset: the global index of local row 0.
    """
    b = len(row_groups)
    same = (row_groups[:, None, :] == col_groups[None, :, :]).any(-1)            # (B, N)
    rows = torch.arange(b, device=same.device)
    same[rows, offset + rows] = False
    return same


def pair_info_nce(image: torch.Tensor, text: torch.Tensor, image_all: torch.Tensor, text_all: torch.Tensor,
                  scale: torch.Tensor, excluded: torch.Tensor | None, offset: int = 0) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE of the local rows against every (gathered) column.

    Args:
        image, text: (B, E) local unit embeddings; row ``i`` matches column ``offset + i``.
        image_all, text_all: (N, E) the columns (the gathered batch; ``image``/``text`` alone
            in one process).
        scale: the inverse temperature.
        excluded: (B, N) bool pairs left out of the denominators, or None.
        offset: global index of local row 0.

    Returns:
        ``{"loss": mean of the two cross-entropies over the local rows, "i2t_hit", "t2i_hit":
        (B,) float, 1 where the top column is the true one or an excluded twin}``.
    """
    i2t = scale * image.float() @ text_all.float().t()                            # (B, N)
    t2i = scale * text.float() @ image_all.float().t()                            # (B, N)
    target = offset + torch.arange(len(image), device=image.device)
    out = {}
    if excluded is None:
        excluded = torch.zeros_like(i2t, dtype=torch.bool)
    for name, logits in (("i2t", i2t), ("t2i", t2i)):
        top = logits.detach().argmax(1)
        out[f"{name}_hit"] = ((top == target) | excluded.gather(1, top[:, None])[:, 0]).float()
        out[name] = F.cross_entropy(logits.masked_fill(excluded, torch.finfo(logits.dtype).min), target)
    out["loss"] = 0.5 * (out.pop("i2t") + out.pop("t2i"))
    return out


class MultiViewInfoNCE(nn.Module):
    """The loss of :class:`~kaleido.dual.task.DualTask`.

    Args:
        cfg: which views pair up, the intra-modal weight, whether to gather across processes.
    """

    def __init__(self, cfg: DualLossConfig = DualLossConfig()):
        super().__init__()
        self.cfg = cfg

    def forward(self, image_views: Sequence[torch.Tensor], text_views: Sequence[torch.Tensor],
                scale: torch.Tensor, text_groups: Sequence[torch.Tensor | None] | None = None,
                text_names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Average InfoNCE over every (image view, text view) pair.

        Args:
            image_views: V_i tensors (B, E) of unit image embeddings, one per image view.
            text_views: V_t tensors (B, E) of unit text embeddings, one per text view.
            scale: the inverse temperature (a scalar tensor, learnable).
            text_groups: per text view (B,) or (B, K) integer codes of rows that are not each
                other's negatives (None: only the diagonal is positive).
            text_names: names of the text views for the logged components (default t0, t1...).

        Returns:
            ``{"contrastive_loss": the mean over the V_i x V_t pairs (+ intra_weight x the image
            view a x b InfoNCE), "<image view>_<text view>_loss": each pair's, "intra_loss" (when
            weighted), "i2t_r1", "t2i_r1": in-batch R@1 of image view 0 x text view 0}``.
        """
        rank, world = _world()
        gather = self.cfg.gather and self.training and world > 1
        b = len(image_views[0])
        offset = rank * b if gather else 0
        g = gather_with_grad if gather else (lambda x: x)
        names = list(text_names or [f"t{k}" for k in range(len(text_views))])
        text_groups = list(text_groups or [None] * len(text_views))
        images_all = [g(v) for v in image_views]
        texts_all = [g(v) for v in text_views]
        out: dict[str, torch.Tensor] = {}
        losses = []
        for t, (text, text_all, groups) in enumerate(zip(text_views, texts_all, text_groups)):
            rows = _as_columns(groups, b, text.device)
            cols = None if rows is None else (gather_no_grad(rows) if gather else rows)
            excluded = None if rows is None else excluded_pairs(rows, cols, offset)
            for v, (image, image_all) in enumerate(zip(image_views, images_all)):
                pair = pair_info_nce(image, text, image_all, text_all, scale, excluded, offset)
                out[f"image_{'ab'[v]}_{names[t]}_loss"] = pair["loss"].detach()
                losses.append(pair["loss"])
                if t == 0 and v == 0:
                    out["i2t_r1"], out["t2i_r1"] = pair["i2t_hit"].mean(), pair["t2i_hit"].mean()
        total = torch.stack(losses).mean()
        if self.cfg.intra_weight > 0 and len(image_views) == 2:
            rows = _as_columns(text_groups[0], b, image_views[0].device)
            cols = None if rows is None else (gather_no_grad(rows) if gather else rows)
            excluded = None if rows is None else excluded_pairs(rows, cols, offset)
            intra = pair_info_nce(image_views[0], image_views[1], images_all[0], images_all[1], scale,
                                  excluded, offset)["loss"]
            out["intra_loss"] = intra.detach()
            total = total + self.cfg.intra_weight * intra
        return {"contrastive_loss": total, **out}
