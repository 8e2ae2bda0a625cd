"""The pre-training run config: model, data, masking, tasks and training loop, one root."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaleido.model.config import KaleidoBertConfig
from kaleido.pretrain.augment import AugmentConfig
from kaleido.pretrain.heads import HEAD_NAMES
from kaleido.pretrain.masking import MaskingConfig
from kaleido.training.config import TrainConfig


@dataclass
class TaskConfig:
    """Loss weights of the seven heads. 0 switches a head off, and its corruption with it,
    so the paper's ablations (B = ITM + AMLM, B+I, ..., B+V) are config switches."""

    amlm: float = 1.0                 # aligned masked language modelling
    itm: float = 1.0                  # image-text matching
    itc: float = 0.0                  # image-text contrastive on the unimodal passes (ALBEF; mines ITM negatives)
    rr: float = 1.0                   # I: rotation of the 1x1 patch
    jps: float = 1.0                  # II: jigsaw of the 2x2 patches
    cp: float = 1.0                   # III: camouflage of one 3x3 patch
    g2cm: float = 1.0                 # IV: grey-to-colour of two 4x4 patches
    b2cm: float = 1.0                 # V: blank-to-colour of three 5x5 patches
    wpa: float = 0.0                  # ViLT's word-patch alignment (optimal transport) on the ITM pass (ViLT: 0.1)
    # ITM on a clean (uncorrupted, unmasked) copy of each pair: B positives + B negatives mined
    # in the batch (from the ITC similarities when itc > 0, else uniformly), never a same-title
    # twin; masking and corruptions then see positives only, so they cannot tell ITM the label.
    # false = the old scheme: ITM on the masked, corrupted sample, negatives from the dataset.
    itm_clean: bool = False
    itm_negative_ratio: float = 0.5   # itm_clean=false: share of samples whose text comes from another product
    itm_hard_ratio: float = 0.5       # itm_clean=false: share of those negatives from the same subcategory
    # g2cm / b2cm reconstruction: kl (the paper's KL of the softmaxed features) | l2 (ImageBERT's
    # masked region feature regression: squared error of the features)
    patch_loss: str = "kl"

    def __post_init__(self):
        if self.wpa > 0 and self.itm <= 0:
            raise ValueError("tasks.wpa is computed on the ITM pass (true pairs pulled together, negatives "
                             "apart); it needs tasks.itm > 0")

    def weights(self) -> dict[str, float]:
        """``{head: weight}`` of the heads that are on."""
        return {name: float(getattr(self, name)) for name in HEAD_NAMES if getattr(self, name) > 0}


@dataclass
class PretrainDataConfig:
    """Which products feed pre-training."""

    split: str = "train"          # split of --split-file to train on ("" = every cached product)
    val_split: str = ""           # split whose losses are logged each epoch (e.g. "val"); "" = none
    limit: int = 0                # first N products only (0 = all): quick runs
    val_limit: int = 0            # first N validation products only (0 = all)
    max_text_len: int = 64        # [CLS] text [SEP] tokens (the paper: 64)
    alignments: str = ""          # alignments.jsonl; "" = CACHE/alignments.jsonl


@dataclass
class PretrainConfig:
    """Root config of ``kaleido pretrain`` (presets in ``kaleido/configs/pretrain/``)."""

    model: KaleidoBertConfig = field(default_factory=KaleidoBertConfig)
    init: str = "minilm"          # minilm | none | a local HF BERT folder | a Kaleido checkpoint (multi-stage)
    tokenizer: str = "minilm"     # minilm | a local HF tokenizer folder
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # ViLT's RandAugment (pixel caches)
    train: TrainConfig = field(default_factory=TrainConfig)
