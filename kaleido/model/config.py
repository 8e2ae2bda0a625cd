"""The Kaleido-BERT model config: one documented dataclass, presets in ``configs/model/``."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaleido.patches.geometry import KALEIDO_GRIDS

ARCHITECTURES = ("single_stream", "two_stream")


@dataclass
class KaleidoBertConfig:
    """Shape of the single-stream encoder. Defaults are the offline MiniLM (BERT) body.

    The text side is BERT's (word + position + segment embeddings); the image side is
    the 55 kaleido patches: FC(feature) + FC(5-D position) + level embedding.
    """

    vocab_size: int = 30522                # WordPiece vocabulary (uncased BERT)
    hidden_size: int = 384                 # H
    num_hidden_layers: int = 6             # L
    num_attention_heads: int = 12          # A
    intermediate_size: int = 1536          # feed-forward width (4H in BERT)
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512     # text positions (BERT's table)
    type_vocab_size: int = 2               # text segments
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    feature_dim: int = 1280                # patch feature size (EfficientNet-Lite0: 1280, ResNet-50: 2048)
    position_dim: int = 5                  # [x1, x2, y1, y2, w*h]
    grids: list[int] = field(default_factory=lambda: list(KALEIDO_GRIDS))  # patch levels (1x1..5x5)
    patch_projector: str = "per_level"     # per_level (one FC per level, the reference code) | shared
    attn_implementation: str = "sdpa"      # sdpa (PyTorch scaled_dot_product_attention) | eager (BERT's matmuls)
    # pooled output read by ITM, retrieval and category: "cls" = BERT's tanh(FC([CLS])) (MiniLM's
    # pooler never got a gradient: sentence-transformers trained it with mean pooling), "mean" =
    # the masked mean of every text and patch hidden state, as the MiniLM weights were trained
    pooling: str = "cls"
    # single_stream: Kaleido-BERT (text and patches in one BERT stack); two_stream: ViLBERT-style
    # (the text layers on the text, an image transformer on the patches, then co-attention
    # layers: queries from one stream, keys / values from the other; pooled = the product
    # of the text and image pooled outputs, ViLBERT's ITM input)
    architecture: str = "single_stream"
    image_layers: int = 2                  # two_stream: self-attention layers of the image stream
    co_attention_layers: int = 2           # two_stream: co-attention layers after both streams

    @property
    def num_patches(self) -> int:
        return sum(g * g for g in self.grids)

    def validate(self) -> "KaleidoBertConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.patch_projector not in ("per_level", "shared"):
            raise ValueError(f"patch_projector must be per_level or shared, not {self.patch_projector!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be sdpa or eager, not {self.attn_implementation!r}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, not {self.pooling!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.architecture == "two_stream" and (self.image_layers < 0 or self.co_attention_layers < 1):
            raise ValueError(f"two_stream needs image_layers >= 0 and co_attention_layers >= 1, got "
                             f"{self.image_layers} and {self.co_attention_layers}")
        return self
