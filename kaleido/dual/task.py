"""The training task of the dual encoder: both towers on every view, then multi-view InfoNCE.

A pre-trained text tower wants a smaller learning rate than a random image tower:
:meth:`DualTask.lr_scales` gives the text tower ``text.lr_scale`` x the run's rate (the shared
loop's :func:`kaleido.training.param_groups` reads it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kaleido.dual.config import DualLossConfig
from kaleido.dual.loss import MultiViewInfoNCE
from kaleido.dual.modeling import DualEncoder
from kaleido.dual.processor import DualProcessor


def _pad_cat(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    """(B_k, T_k) tensors -> (sum B_k, max T_k), right-padded with ``value``."""
    t = max(x.shape[1] for x in tensors)
    return torch.cat([nn.functional.pad(x, (0, t - x.shape[1]), value=value) for x in tensors])


class DualTask(nn.Module):
    """Dual encoder + multi-view InfoNCE; ``forward(batch)`` of a :class:`~kaleido.dual.data.DualCollator` batch.

    Args:
        model: the dual encoder (its ``config.text`` sets freezing and ``lr_scale``).
        processor: saved beside the model by :meth:`save_pretrained`.
        loss: the views and the gathering.
    """

    def __init__(self, model: DualEncoder, processor: DualProcessor, loss: DualLossConfig = DualLossConfig()):
        super().__init__()
        self.model, self.processor, self.cfg = model, processor, loss
        self.loss = MultiViewInfoNCE(loss)
        if model.config.text.freeze:
            model.text.requires_grad_(False)

    def lr_scales(self) -> dict[str, float]:
        """``{parameter prefix: learning-rate factor}`` for the shared loop's param groups."""
        return {"model.text.": float(self.model.config.text.lr_scale)}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = [v for v in "ab" if f"patch_features_{v}" in batch]
        n, b = len(views), len(batch["patch_positions"])
        feats = torch.cat([batch[f"patch_features_{v}"] for v in views])                 # (V*B, P, D)
        masks = torch.cat([batch[f"patch_mask_{v}"] for v in views])                     # (V*B, P)
        pos = batch["patch_positions"].repeat(n, 1, 1)                                   # (V*B, P, 5)
        whole = batch["whole_image"].repeat(n, 1) if "whole_image" in batch else None       # (V*B, C)
        images = self.model.encode_image(feats, pos, masks, whole).split(b)
        names = list(self.cfg.text_views)
        if all(f"{t}_states" in batch for t in names):  # a frozen body's states, computed once
            texts = self.model.project_text(torch.cat([batch[f"{t}_states"] for t in names])).split(b)
        else:
            pad_id = self.processor.tokenizer.pad_token_id
            ids = _pad_cat([batch[f"{t}_input_ids"] for t in names], pad_id)             # (T*B, L)
            mask = _pad_cat([batch[f"{t}_attention_mask"] for t in names], 0)
            texts = self.model.encode_text(ids, mask).split(b)
        scale = self.model.scale()
        out = self.loss(list(images), list(texts), scale, [batch.get(f"{t}_groups") for t in names], names)
        loss = out["contrastive_loss"]
        out["contrastive_loss"] = loss.detach()
        return {"loss": loss, **out, "temperature": (1.0 / scale).detach()}

    @torch.inference_mode()
    def text_states(self, ids: list, batch_size: int = 256) -> torch.Tensor:
        """(N, H) pooled states of the text body for token-id arrays (frozen body: eval mode,
        no dropout, so they never change during training and are computed once)."""
        if not self.model.config.text.freeze:
            raise ValueError("text states are only fixed when the text body is frozen (model.text.freeze=true)")
        body, out = self.model.text, []
        was_training = body.training
        body.eval()
        device = next(body.parameters()).device
        for start in range(0, len(ids), batch_size):
            batch = self.processor.pad(ids[start:start + batch_size])
            out.append(body(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu())
        body.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.model.bert_config.hidden_size)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.model.config.text.freeze:
            self.model.text.eval()  # a frozen body runs without dropout (its cached states stay valid)
        return self

    def save_pretrained(self, path: str | Path) -> Path:
        """The dual encoder (plain weights) and its processor in one folder."""
        path = self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path
