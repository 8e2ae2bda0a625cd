"""The fine-tuning run config: one root with each task's settings, the data and the loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from kaleido.finetune.caption import CaptionConfig
from kaleido.finetune.category import CategoryConfig
from kaleido.finetune.multitask import MultitaskConfig
from kaleido.finetune.retrieval import RetrievalConfig
from kaleido.training.config import TrainConfig

KINDS = ("retrieval", "category", "caption", "multitask")


@dataclass
class FinetuneDataConfig:
    """Which products are trained on and validated on."""

    split: str = "train"      # split of --split-file to train on
    val_split: str = "val"    # split whose losses are logged ("" = none)
    limit: int = 0            # first N training products (0 = all)
    val_limit: int = 256      # first N validation products (0 = all)
    max_text_len: int = 64    # used when the start checkpoint has no processor


@dataclass
class FinetuneConfig:
    """Root config of ``kaleido finetune`` (presets in ``kaleido/configs/finetune/``)."""

    model: str = "minilm"     # model preset, used only when --from is not a Kaleido-BERT folder
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    category: CategoryConfig = field(default_factory=CategoryConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)  # kind multitask: one encoder, these tasks
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
