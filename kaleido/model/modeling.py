"""The bare Kaleido-BERT encoder: ``[CLS] text [SEP]`` + 55 kaleido patches in one BERT stack
(or, ``architecture="two_stream"``, ViLBERT's two streams joined by co-attention).

It returns hidden states, never losses; task heads live in ``kaleido.pretrain.heads``
(and the downstream heads in their own modules). The transformer layers are
transformers' ``BertEncoder``, so BERT checkpoints load by name, and attention runs
through PyTorch's scaled-dot-product attention or BERT's eager matmuls
(``attn_implementation``; ``benchmarks/pretrain_step.py`` compares them).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from kaleido.model.coattention import CoAttentionLayer
from kaleido.model.config import KaleidoBertConfig
from kaleido.model.embeddings import PatchEmbeddings, TextEmbeddings

MODEL_TYPE = "kaleido-bert"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class KaleidoBertOutput:
    """Encoder outputs. The sequence is the text (``text_length`` tokens) then the patches."""

    last_hidden_state: torch.Tensor  # (B, T + P, H)
    pooled: torch.Tensor             # (B, H): tanh(FC(hidden of [CLS])), or the masked mean (config.pooling)
    text_length: int
    keys: torch.Tensor | None = None  # (B, T + P) bool: the real positions (not padding)

    def modality_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H), (B, H): the mean hidden state of the real text tokens and of the real patches."""
        keys = self.keys if self.keys is not None else torch.ones(
            self.last_hidden_state.shape[:2], dtype=torch.bool, device=self.last_hidden_state.device)
        t = self.text_length
        return masked_mean(self.text_hidden, keys[:, :t]), masked_mean(self.patch_hidden, keys[:, t:])

    @property
    def text_hidden(self) -> torch.Tensor:
        return self.last_hidden_state[:, :self.text_length]   # (B, T, H)

    @property
    def patch_hidden(self) -> torch.Tensor:
        return self.last_hidden_state[:, self.text_length:]   # (B, P, H)


def bert_config(cfg: KaleidoBertConfig) -> BertConfig:
    """The transformers ``BertConfig`` of the encoder layers."""
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.initializer_range,
        pad_token_id=cfg.pad_token_id, attn_implementation=cfg.attn_implementation)


class Pooler(nn.Module):
    """BERT's pooler: tanh(FC(hidden state of [CLS]))."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


def masked_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, L, H), (B, L) bool -> (B, H) mean over the kept positions."""
    w = keep.to(hidden.dtype).unsqueeze(-1)                            # (B, L, 1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)


class KaleidoBertModel(nn.Module):
    """Single-stream BERT over text tokens and kaleido patches.

    Build it with :func:`kaleido.model.create_model`, which also loads weights.
    """

    def __init__(self, config: KaleidoBertConfig):
        super().__init__()
        self.config = config.validate()
        self.embeddings = TextEmbeddings(config)
        self.patch_embeddings = PatchEmbeddings(config)
        self.encoder = BertEncoder(bert_config(config))
        self.pooler = Pooler(config.hidden_size)
        if config.architecture == "two_stream":  # ViLBERT: an image stream and co-attention layers
            self.image_encoder = BertEncoder(bert_config(dataclasses.replace(config, num_hidden_layers=config.image_layers)))
            self.co_layers = nn.ModuleList(CoAttentionLayer(config) for _ in range(config.co_attention_layers))
            self.image_pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        patch_features: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        attention_pattern: torch.Tensor | None = None,
    ) -> KaleidoBertOutput:
        """Encode a batch.

        Args:
            input_ids: (B, T) WordPiece ids of ``[CLS] text [SEP]`` (padded).
            patch_features: (B, P, D) patch features.
            patch_positions: (B, P, 5) normalised ``[x1, x2, y1, y2, w*h]``.
            attention_mask: (B, T) 1 for real tokens, 0 for padding.
            token_type_ids: (B, T) text segments (0 by default).
            patch_mask: (B, P) 1 for real patches (all by default).
            attention_pattern: optional (B, T+P, T+P) or (T+P, T+P) boolean: which positions
                each position may attend to (e.g. the left-to-right mask of captioning);
                combined with the padding masks.

        Returns:
            :class:`KaleidoBertOutput`.
        """
        b, t = input_ids.shape
        text = self.embeddings(input_ids, token_type_ids)                  # (B, T, H)
        patches = self.patch_embeddings(patch_features, patch_positions)   # (B, P, H)
        x = torch.cat([text, patches], dim=1)                              # (B, T+P, H)
        keys = torch.ones(b, x.shape[1], dtype=torch.bool, device=x.device)
        if attention_mask is not None:
            keys[:, :t] = attention_mask.bool()
        if patch_mask is not None:
            keys[:, t:] = patch_mask.bool()
        pattern = None
        if attention_pattern is not None:
            pattern = attention_pattern.bool()
            pattern = pattern if pattern.dim() == 3 else pattern[None]    # (B or 1, L, L)
        if self.config.architecture == "two_stream":
            hidden, pooled = self._two_stream(text, patches, keys, pattern)
            return KaleidoBertOutput(last_hidden_state=hidden, pooled=pooled, text_length=t, keys=keys)
        allowed = keys[:, None, None, :]                                   # (B, 1, 1, L)
        if pattern is not None:
            allowed = allowed & pattern[:, None]
        hidden = self._encode(x, allowed)
        pooled = masked_mean(hidden, keys) if self.config.pooling == "mean" else self.pooler(hidden)
        return KaleidoBertOutput(last_hidden_state=hidden, pooled=pooled, text_length=t, keys=keys)

    def _two_stream(self, text: torch.Tensor, patches: torch.Tensor, keys: torch.Tensor,
                    pattern: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """ViLBERT: each stream on its own, then co-attention; ``(hidden (B, T+P, H), pooled (B, H))``.

        ``pattern`` (the captioning mask, when given) applies to each part: text-text to the
        text stream, patch-patch to the image stream, text-patch and patch-text to the two
        halves of every co-attention layer.
        """
        t = text.shape[1]
        rows_cols = {"text": slice(0, t), "image": slice(t, None)}

        def allowed(query: str, key: str) -> torch.Tensor:                # (B, 1 or Lq, Lk)
            a = keys[:, None, rows_cols[key]]
            return a if pattern is None else a & pattern[:, rows_cols[query], rows_cols[key]]

        th = self._encode(text, allowed("text", "text")[:, None])
        vh = self._encode(patches, allowed("image", "image")[:, None], self.image_encoder)
        for layer in self.co_layers:
            th, vh = layer(th, vh, allowed("text", "image"), allowed("image", "text"))
        text_pooled = masked_mean(th, keys[:, :t]) if self.config.pooling == "mean" else self.pooler(th)
        image_pooled = torch.tanh(self.image_pooler(masked_mean(vh, keys[:, t:])))
        return torch.cat([th, vh], dim=1), text_pooled * image_pooled

    def _encode(self, x: torch.Tensor, allowed: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        additive = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        additive = additive.masked_fill(~allowed, torch.finfo(x.dtype).min)
        return (encoder or self.encoder)(x, attention_mask=additive).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text alone through the same encoder (no patches): (B, H) mean-pooled hidden states.

        The unimodal passes of the image-text contrastive head (ALBEF's "align before fuse").
        """
        x = self.embeddings(input_ids)                                     # (B, T, H)
        keys = (attention_mask.bool() if attention_mask is not None
                else torch.ones(input_ids.shape, dtype=torch.bool, device=x.device))
        return masked_mean(self._encode(x, keys[:, None, None, :]), keys)

    def encode_patches(self, patch_features: torch.Tensor, patch_positions: torch.Tensor) -> torch.Tensor:
        """Patches alone through the same encoder (no text; the image stream of a two-stream
        model): (B, H) mean-pooled hidden states."""
        x = self.patch_embeddings(patch_features, patch_positions)         # (B, P, H)
        keys = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        encoder = self.image_encoder if self.config.architecture == "two_stream" else None
        return masked_mean(self._encode(x, keys[:, None, None, :], encoder), keys)

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_model(self, str(path / WEIGHTS_NAME), metadata={"format": "pt", "model_type": MODEL_TYPE})
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "KaleidoBertModel":
        """Load a folder written by :meth:`save_pretrained` (``overrides`` change e.g. dropout)."""
        from safetensors.torch import load_model

        path = Path(path)
        config = read_model_config(path)
        model = cls(dataclasses.replace(config, **overrides))
        load_model(model, str(path / WEIGHTS_NAME), strict=True)
        return model


def read_model_config(path: str | Path) -> KaleidoBertConfig:
    """The :class:`KaleidoBertConfig` of a saved Kaleido-BERT folder (clear errors otherwise)."""
    path = Path(path)
    file = path / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not a saved Kaleido-BERT model")
    raw = json.loads(file.read_text())
    if raw.pop("model_type", None) != MODEL_TYPE:
        raise ValueError(f"{file}: model_type is not {MODEL_TYPE!r}; for a plain BERT checkpoint "
                         "use create_model(..., pretrained=PATH)")
    if not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}")
    fields = {f.name for f in dataclasses.fields(KaleidoBertConfig)}
    unknown = set(raw) - fields
    if unknown:
        raise ValueError(f"{file}: unknown config keys {sorted(unknown)}")
    return KaleidoBertConfig(**raw)


def is_kaleido_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder saved by :meth:`KaleidoBertModel.save_pretrained`."""
    file = Path(path) / CONFIG_NAME
    try:
        return file.is_file() and json.loads(file.read_text()).get("model_type") == MODEL_TYPE
    except json.JSONDecodeError:
        return False
