"""ViLBERT's co-attention (Lu et al., NeurIPS 2019): each stream attends to the other one.

In a co-attentional transformer layer the text stream's queries attend to the image
stream's keys and values, and the image stream's queries to the text's; each half is then
a BERT-style feed-forward block (post-LayerNorm residuals). Both halves read the layer's
inputs, so the layer is symmetric. ``KaleidoBertModel`` with ``architecture="two_stream"``
stacks these after a text stream (the BERT layers) and an image stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from kaleido.model.config import KaleidoBertConfig


class CoAttentionBlock(nn.Module):
    """One stream's half: cross-attention (queries from ``x``, keys / values from ``other``)
    then a feed-forward block, each with a residual and LayerNorm."""

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attention_out = nn.Linear(h, h)
        self.attention_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, h)
        self.output_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = ACT2FN[cfg.hidden_act]
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.attention_dropout = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, other: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Update ``x`` from ``other``.

        Args:
            x: (B, Lq, H) this stream.
            other: (B, Lk, H) the other stream.
            allowed: (B, 1 or Lq, Lk) bool: which of the other's positions each query may
                attend to. A query allowed none (e.g. a patch under a captioning mask, which
                must not see the text) gets no cross-attention update.

        Returns:
            (B, Lq, H).
        """
        b, lq, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, h // self.heads).transpose(1, 2)   # (B, heads, L, h/heads)

        some = allowed.any(-1, keepdim=True)                                   # (B, Lq|1, 1)
        mask = (allowed | ~some)[:, None]        # a row with no key attends to all, then is zeroed
        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(other)), split(self.value(other)),
                                             attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, lq, h) * some.to(x.dtype)
        x = self.attention_norm(x + self.dropout(self.attention_out(ctx)))
        return self.output_norm(x + self.dropout(self.output(self.act(self.intermediate(x)))))


class CoAttentionLayer(nn.Module):
    """The text half and the image half of one co-attentional layer."""

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        self.text = CoAttentionBlock(cfg)
        self.image = CoAttentionBlock(cfg)

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_to_image: torch.Tensor,
                image_to_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H), (B, P, H) -> both updated from the other (masks as in :class:`CoAttentionBlock`)."""
        return self.text(text, image, text_to_image), self.image(image, text, image_to_text)
