"""The dual encoder (ERNIE-ViL 2.0 style): an image tower over the cached kaleido patches and a
BERT text tower, projected into one L2-normalised space with a learnable temperature.

Image tower ``transformer``: each patch is FC(LayerNorm(feature)) + FC(5-D position) + level
embedding, then a small pre-norm transformer with a learned [CLS] (or a learned-query attention
pool). ``pooled``: the mean of the patch features through an MLP (the cheap variant). Hidden
patches (``patch_mask`` False, the augmentations' patch and level drop) are masked out of
attention and of the mean. The model returns embeddings, never losses (see
:mod:`kaleido.dual.loss`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kaleido.dual.config import DualEncoderConfig, ImageTowerConfig, TextTowerConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "kaleido-dual-encoder"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_SIZE = 30522  # the offline MiniLM WordPiece vocabulary (the default tokenizer)


class PatchTransformerTower(nn.Module):
    """(B, P, D) patch features + (B, P, 5) positions -> (B, H) pooled image state."""

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        h = cfg.hidden_size
        self.pooling = cfg.pooling
        self.feature_norm = nn.LayerNorm(cfg.feature_dim)
        self.feature_proj = nn.Linear(cfg.feature_dim, h)
        self.position_proj = nn.Linear(5, h)
        self.level_embeddings = nn.Embedding(len(cfg.grids), h)
        self.embed_norm = nn.LayerNorm(h)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("levels", torch.repeat_interleave(
            torch.arange(len(cfg.grids)), torch.tensor([g * g for g in cfg.grids])), persistent=False)
        layer = nn.TransformerEncoderLayer(h, cfg.num_heads, int(h * cfg.mlp_ratio), cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(h)
        self.query = nn.Parameter(torch.randn(1, 1, h) * 0.02)  # [CLS] token, or the pool's query
        if cfg.pooling == "attention":
            self.pool = nn.MultiheadAttention(h, cfg.num_heads, batch_first=True)
        self.whole_image = cfg.whole_image
        if cfg.whole_image:  # one more token: the whole image's pooled feature
            self.whole_norm = nn.LayerNorm(cfg.whole_image_dim)
            self.whole_proj = nn.Linear(cfg.whole_image_dim, h)

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                whole_image: torch.Tensor | None = None) -> torch.Tensor:
        if features.shape[1] != len(self.levels):
            raise ValueError(f"{features.shape[1]} patches per image; the tower expects {len(self.levels)}")
        x = self.feature_proj(self.feature_norm(features)) + self.position_proj(positions.to(features.dtype))
        x = self.dropout(self.embed_norm(x + self.level_embeddings(self.levels)[None]))  # (B, P, H)
        ignore = ~mask.bool()                                                            # (B, P)
        if self.whole_image:
            whole = self.dropout(self.embed_norm(self.whole_proj(self.whole_norm(_need(whole_image)))))[:, None]
            x = torch.cat([whole.to(x.dtype), x], 1)                                     # (B, 1+P, H)
            ignore = torch.cat([torch.zeros_like(ignore[:, :1]), ignore], 1)
        query = self.query.expand(len(x), -1, -1).to(x.dtype)                            # (B, 1, H)
        if self.pooling == "cls":
            x = torch.cat([query, x], 1)                                                 # (B, 1+P, H)
            ignore = torch.cat([torch.zeros_like(ignore[:, :1]), ignore], 1)
            return self.final_norm(self.encoder(x, src_key_padding_mask=ignore)[:, 0])
        x = self.final_norm(self.encoder(x, src_key_padding_mask=ignore))
        return self.pool(query, x, x, key_padding_mask=ignore, need_weights=False)[0][:, 0]


class PooledTower(nn.Module):
    """Mean of the (unmasked) patch features -> LayerNorm (beside the LayerNormed whole-image
    feature, with ``whole_image``) -> 2-layer MLP -> (B, H)."""

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.feature_dim)
        self.whole_image = cfg.whole_image
        width = cfg.feature_dim
        if cfg.whole_image:
            self.whole_norm = nn.LayerNorm(cfg.whole_image_dim)
            width += cfg.whole_image_dim
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden_size), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden_size, cfg.hidden_size))

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                whole_image: torch.Tensor | None = None) -> torch.Tensor:
        w = mask.to(features.dtype).unsqueeze(-1)                                        # (B, P, 1)
        x = self.norm((features * w).sum(1) / w.sum(1).clamp(min=1.0))                  # (B, D) patch mean
        if self.whole_image:
            x = torch.cat([x, self.whole_norm(_need(whole_image)).to(x.dtype)], 1)      # (B, D + C)
        return self.mlp(x)


class LinearTower(nn.Module):
    """The whole-image feature alone: standardised (``mean`` / ``std`` buffers: the training
    products' statistics, identity until set), dropout, one linear map -> (B, H). The patches
    are not read. This is the linear reference's image side."""

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        self.whole_image = True
        self.register_buffer("mean", torch.zeros(cfg.whole_image_dim))
        self.register_buffer("std", torch.ones(cfg.whole_image_dim))
        self.map = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.whole_image_dim, cfg.hidden_size))

    def forward(self, features: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                whole_image: torch.Tensor | None = None) -> torch.Tensor:
        x = _need(whole_image).to(self.mean.dtype)
        return self.map((x - self.mean) / self.std)


def _need(whole_image: torch.Tensor | None) -> torch.Tensor:
    if whole_image is None:
        raise ValueError("this image tower reads the whole-image feature too (model.image.whole_image=true); "
                         "give a feature cache made by `kaleido patches union --whole-image`")
    return whole_image


class TextTower(nn.Module):
    """A BERT body (no pooler), mean pooled over the real tokens (or its [CLS] state)."""

    def __init__(self, cfg: TextTowerConfig, bert_config):
        super().__init__()
        from transformers import BertModel

        self.pooling = cfg.pooling
        self.bert = BertModel(bert_config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)                                # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class DualEncoder(nn.Module):
    """Image tower + text tower + two linear projections + a learnable temperature.

    Args:
        cfg: the towers and the shared space.
        bert_config: a ``transformers.BertConfig`` of the text tower.
    """

    def __init__(self, cfg: DualEncoderConfig, bert_config):
        super().__init__()
        self.config, self.bert_config = cfg, bert_config
        tower = {"transformer": PatchTransformerTower, "pooled": PooledTower, "linear": LinearTower}[cfg.image.tower]
        self.image = tower(cfg.image)
        self.text = TextTower(cfg.text, bert_config)
        self.image_proj = nn.Linear(cfg.image.hidden_size, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(bert_config.hidden_size, cfg.embed_dim, bias=cfg.text_proj_bias)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def scale(self) -> torch.Tensor:
        """The inverse temperature ``exp(logit_scale)``, capped at ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def encode_image(self, patch_features: torch.Tensor, patch_positions: torch.Tensor,
                     patch_mask: torch.Tensor | None = None, whole_image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P, D) features, (B, P, 5) positions, optional (B, P) bool kept-patch mask and
        (B, C) whole-image features (towers with ``whole_image``) -> (B, E) unit vectors."""
        if patch_mask is None:
            patch_mask = torch.ones(patch_features.shape[:2], dtype=torch.bool, device=patch_features.device)
        state = self.image(patch_features, patch_positions, patch_mask, whole_image)
        return F.normalize(self.image_proj(state).float(), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and mask -> (B, E) unit vectors."""
        return self.project_text(self.text(input_ids, attention_mask))

    def project_text(self, states: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled text-body states -> (B, E) unit vectors (a frozen body's states can be
        computed once: :meth:`DualTask.text_states`)."""
        return F.normalize(self.text_proj(states).float(), dim=-1)

    def forward(self, input_ids=None, attention_mask=None, patch_features=None, patch_positions=None,
                patch_mask=None, whole_image=None) -> dict[str, torch.Tensor]:
        """Embeds whichever side is given: ``{"image_embeds": (B, E), "text_embeds": (B, E)}``."""
        out = {}
        if patch_features is not None:
            out["image_embeds"] = self.encode_image(patch_features, patch_positions, patch_mask, whole_image)
        if input_ids is not None:
            out["text_embeds"] = self.encode_text(input_ids, attention_mask)
        return out

    def save_pretrained(self, path: str | Path) -> Path:
        """``config.json`` (tower configs + the BERT config) and ``model.safetensors``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(
            {"model_type": MODEL_TYPE, "config": dataclasses.asdict(self.config),
             "bert_config": self.bert_config.to_dict()}, indent=2) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DualEncoder":
        """A folder written by :meth:`save_pretrained` -> the model (eval mode)."""
        from omegaconf import OmegaConf
        from safetensors.torch import load_file
        from transformers import BertConfig

        cfg_dict = read_dual_config(path)
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DualEncoderConfig), cfg_dict["config"]))
        model = cls(cfg, BertConfig.from_dict(cfg_dict["bert_config"]))
        missing, unexpected = model.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        return model.eval()


def read_dual_config(path: str | Path) -> dict:
    """The ``config.json`` of a saved dual encoder (raises a clear error for anything else)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not a saved dual encoder "
                                "(`kaleido dual train` writes RUN/final)")
    info = json.loads(file.read_text())
    if info.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{file}: model_type {info.get('model_type')!r} is not {MODEL_TYPE!r}")
    return info


def is_dual_encoder(path: str | Path) -> bool:
    """True for a folder written by :meth:`DualEncoder.save_pretrained`."""
    try:
        read_dual_config(path)
        return True
    except (FileNotFoundError, ValueError, json.JSONDecodeError):
        return False


def _bert_config(cfg: TextTowerConfig):
    from transformers import BertConfig

    from kaleido.tokenizer import minilm_dir

    if cfg.init == "none":
        return BertConfig(vocab_size=VOCAB_SIZE, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                          num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                          max_position_embeddings=cfg.max_position_embeddings)
    folder = minilm_dir() if cfg.init == "minilm" else Path(cfg.init)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text tower init {cfg.init!r}: {folder} is not a HF BERT folder")
    return BertConfig.from_pretrained(str(folder), local_files_only=True)


def create_dual_encoder(cfg: DualEncoderConfig | str = "default", pretrained: bool | str = True) -> DualEncoder:
    """Build a dual encoder and load its weights.

    Args:
        cfg: a config, a ``kaleido/configs/dual`` preset name (its ``model`` part), or the
            folder of a saved dual encoder (loaded whole).
        pretrained: ``True``: the text tower from ``cfg.text.init`` (the offline MiniLM, or a
            local HF BERT folder; nothing for ``none``), the image tower random;
            ``False``: everything random; a path: a saved dual encoder.

    Returns:
        The model (train mode unless loaded from a folder).
    """
    if isinstance(pretrained, (str, Path)):
        return DualEncoder.from_pretrained(pretrained)
    if isinstance(cfg, (str, Path)):
        if Path(cfg).is_dir():
            return DualEncoder.from_pretrained(cfg)
        from kaleido.config import load_config
        from kaleido.dual.config import DualRunConfig

        cfg = load_config(DualRunConfig, cfg, component="dual").model
    bert_config = _bert_config(cfg.text)
    model = DualEncoder(cfg, bert_config)
    if pretrained and cfg.text.init != "none":
        from transformers import BertModel

        from kaleido.tokenizer import minilm_dir

        folder = minilm_dir() if cfg.text.init == "minilm" else Path(cfg.text.init)
        source = BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
        missing, unexpected = model.text.bert.load_state_dict(source.state_dict(), strict=False)
        if missing:
            raise ValueError(f"text tower init {folder}: missing weights {missing[:5]}")
        log.info("text tower: BERT weights from %s", folder)
    return model
