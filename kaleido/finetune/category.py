"""Category, subcategory and attribute recognition: linear classifiers on the encoder's output.

The classifiers read the pooled output (``pooling=pooled``) or the mean text state and the
mean patch state side by side (``pooling=means``: frozen, these two already separate the
subcategories better than the pooled output, ``scripts/frozen_probe.py``). A fresh head
learns at ``head_lr_scale`` x the run's rate, the pre-trained encoder at the run's rate.

The targets are ``category`` and ``subcategory`` (CR, SUB) and any attribute column of the
catalog (``baseColour``, ``gender``, ``usage``, ``season``, ``masterCategory`` in
fashion-products), all trained jointly; ``targets=[all]`` takes every one the training
products have. Label names come from the training split; a validation or test product whose label
never occurs in training cannot be predicted right and is counted as an error (the
evaluation reports how many there were).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kaleido.finetune.base import FinetuneTask
from kaleido.finetune.pairs import PairInputs
from kaleido.model.modeling import KaleidoBertModel

INPUTS = ("image+text", "image")
POOLINGS = ("pooled", "means")
UNKNOWN = -100


@dataclass
class CategoryConfig:
    """Category / subcategory fine-tuning."""

    # trained jointly: category, subcategory, attribute columns, or [all] (every label column)
    targets: list[str] = field(default_factory=lambda: ["category", "subcategory"])
    inputs: str = "image+text"   # image+text (the paper) | image (the title left out: [CLS] [SEP])
    dropout: float = 0.1
    pooling: str = "pooled"      # pooled (the encoder's pooled output) | means ([text mean; patch mean])
    head_lr_scale: float = 1.0   # the classifiers' learning rate / the run's (the encoder's) rate
    # the classifiers also read the 1x1 patch's backbone feature (layer-normed), past the encoder:
    # frozen, that input separates subcategories better than the budget encoder's outputs
    input_skip: bool = False

    def __post_init__(self):
        if not self.targets or any(not isinstance(t, str) or not t.strip() for t in self.targets):
            raise ValueError(f"category targets must be label columns (category, subcategory, an "
                             f"attribute such as baseColour) or [all], not {self.targets}")
        if "all" in self.targets and len(self.targets) > 1:
            raise ValueError(f"category targets: 'all' stands alone, not in {self.targets}")
        if self.inputs not in INPUTS:
            raise ValueError(f"category inputs must be one of {INPUTS}, not {self.inputs!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"category pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if not self.head_lr_scale > 0:
            raise ValueError(f"category head_lr_scale must be > 0, not {self.head_lr_scale}")


def product_label(product, target: str) -> str:
    """The product's label of ``target``: its category / subcategory or an attribute ('' = none)."""
    value = getattr(product, target) if target in ("category", "subcategory") else product.attributes.get(target)
    return "" if value is None else str(value).strip()


def resolve_targets(products, targets: list[str]) -> list[str]:
    """``targets`` with ``all`` expanded to category, subcategory and every attribute column
    with at least two labels among ``products``."""
    if targets != ["all"]:
        return list(targets)
    columns = ["category", "subcategory"] + sorted({k for p in products for k in p.attributes})
    return [t for t in columns if len({product_label(p, t) for p in products} - {""}) >= 2]


def label_names(products, target: str) -> list[str]:
    """Sorted label names of ``target`` among ``products`` (empty labels left out)."""
    return sorted({product_label(p, target) for p in products} - {""})


class CategoryDataset(Dataset):
    """Item ``i``: the product index and its label ids (-100 where unknown to the classifier)."""

    def __init__(self, pairs: PairInputs, labels: dict[str, list[str]]):
        self.pairs = pairs
        index = {t: {name: k for k, name in enumerate(names)} for t, names in labels.items()}
        self.targets = {t: np.array([index[t].get(product_label(p, t), UNKNOWN) for p in pairs.products])
                        for t in labels}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, **{f"{t}_labels": self.targets[t][i] for t in self.targets}}


def title_free_ids(tokenizer) -> np.ndarray:
    """The text of ``inputs=image``: ``[CLS] [SEP]``, the title left out."""
    return np.array([tokenizer.cls_token_id, tokenizer.sep_token_id])


class CategoryCollator:
    def __init__(self, pairs: PairInputs, inputs: str):
        self.pairs, self.inputs = pairs, inputs
        self.empty = title_free_ids(pairs.processor.tokenizer)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        idx = [it["index"] for it in items]
        text_ids = [self.empty] * len(idx) if self.inputs == "image" else None
        batch = self.pairs.batch(idx, idx, text_ids=text_ids)
        for key in items[0]:
            if key.endswith("_labels"):
                batch[key] = torch.tensor([int(it[key]) for it in items])
        return batch


class CategoryTask(FinetuneTask):
    """Kaleido-BERT + one linear classifier per target on the pooled output or the modality means."""

    kind = "category"
    config_class = CategoryConfig

    def __init__(self, model: KaleidoBertModel, cfg: CategoryConfig, labels: dict[str, list[str]]):
        super().__init__(model, cfg)
        self.labels = {t: list(names) for t, names in labels.items()}
        self.dropout = nn.Dropout(cfg.dropout)
        width = model.config.hidden_size * (2 if cfg.pooling == "means" else 1)
        if cfg.input_skip:
            if model.config.grids[0] != 1:
                raise ValueError(f"category.input_skip reads the 1x1 patch, but the model's grids are "
                                 f"{model.config.grids}")
            self.skip_norm = nn.LayerNorm(model.config.feature_dim)
            width += model.config.feature_dim
        self.classifiers = nn.ModuleDict({t: nn.Linear(width, len(self.labels[t])) for t in self.labels})

    @classmethod
    def build(cls, model, cfg, info):
        return cls(model, cfg, info["labels"])

    def extras(self) -> dict:
        return {"labels": self.labels}

    def lr_scales(self) -> dict[str, float]:
        """``{parameter prefix: learning-rate factor}`` for the shared loop's param groups."""
        if self.cfg.head_lr_scale == 1.0:
            return {}
        return {"classifiers.": self.cfg.head_lr_scale, "skip_norm.": self.cfg.head_lr_scale}

    def features(self, out, patch_features: torch.Tensor) -> torch.Tensor:
        """(B, H) or (B, 2H) per ``pooling``, then the 1x1 patch's feature with ``input_skip``."""
        x = torch.cat(out.modality_means(), dim=-1) if self.cfg.pooling == "means" else out.pooled
        if self.cfg.input_skip:
            x = torch.cat([x, self.skip_norm(patch_features[:, 0].to(x.dtype))], dim=-1)
        return x

    def logits(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(batch["input_ids"], batch["patch_features"], batch["patch_positions"],
                         batch["attention_mask"])
        features = self.dropout(self.features(out, batch["patch_features"]))
        return {t: head(features).float() for t, head in self.classifiers.items()}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        results = {}
        for t, logits in self.logits(batch).items():
            labels = batch[f"{t}_labels"]
            known = labels != UNKNOWN
            loss = F.cross_entropy(logits, labels, ignore_index=UNKNOWN) if known.any() else logits.sum() * 0
            results[f"{t}_loss"] = loss
            results[f"{t}_acc"] = (logits.argmax(1) == labels).float().mean().detach()
        results["loss"] = sum(results[f"{t}_loss"] for t in self.classifiers)
        return results
