"""Input embeddings of the single stream: BERT's text embeddings and the kaleido patch embeddings."""

from __future__ import annotations

import torch
from torch import nn

from kaleido.model.config import KaleidoBertConfig


class TextEmbeddings(nn.Module):
    """word + position (0..T-1) + segment, then LayerNorm and dropout (BERT's; same names,
    so BERT checkpoints load into ``embeddings.*`` unchanged)."""

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H)."""
        t = input_ids.shape[1]
        if t > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {t} tokens exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        positions = torch.arange(t, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class PatchEmbeddings(nn.Module):
    """FC(feature) + FC(5-D position) + level embedding, then LayerNorm and dropout.

    With ``patch_projector="per_level"`` each level has its own feature projector and
    its own type id, as in the authors' reference code.
    """

    def __init__(self, cfg: KaleidoBertConfig):
        super().__init__()
        n_levels = len(cfg.grids)
        n_proj = n_levels if cfg.patch_projector == "per_level" else 1
        self.feature_proj = nn.ModuleList(nn.Linear(cfg.feature_dim, cfg.hidden_size) for _ in range(n_proj))
        self.position_proj = nn.Linear(cfg.position_dim, cfg.hidden_size)
        self.level_embeddings = nn.Embedding(n_levels, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        sizes = [g * g for g in cfg.grids]
        self.register_buffer("levels", torch.repeat_interleave(torch.arange(n_levels), torch.tensor(sizes)),
                             persistent=False)
        self.sizes = sizes
        self.feature_dim = cfg.feature_dim

    def forward(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, P, D) features and (B, P, 5) positions -> (B, P, H)."""
        if features.shape[1:] != (len(self.levels), self.feature_dim):
            raise ValueError(f"patch features of shape {tuple(features.shape)}; the model expects "
                             f"(batch, {len(self.levels)}, {self.feature_dim})")
        if len(self.feature_proj) == 1:
            x = self.feature_proj[0](features)
        else:
            chunks = features.split(self.sizes, dim=1)  # one (B, g*g, D) chunk per level
            x = torch.cat([proj(c) for proj, c in zip(self.feature_proj, chunks)], dim=1)
        x = x + self.position_proj(positions.to(x.dtype)) + self.level_embeddings(self.levels)[None]
        return self.dropout(self.LayerNorm(x))
