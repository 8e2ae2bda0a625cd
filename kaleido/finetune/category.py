"""Category, subcategory and attribute recognition: classifiers on the pooled [CLS].

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
UNKNOWN = -100


@dataclass
class CategoryConfig:
    """Category / subcategory fine-tuning."""

    # trained jointly: category, subcategory, attribute columns, or [all] (every label column)
    targets: list[str] = field(default_factory=lambda: ["category", "subcategory"])
    inputs: str = "image+text"   # image+text (the paper) | image (the title left out: [CLS] [SEP])
    dropout: float = 0.1

    def __post_init__(self):
        if not self.targets or any(not isinstance(t, str) or not t.strip() for t in self.targets):
            raise ValueError(f"category targets must be label columns (category, subcategory, an "
                             f"attribute such as baseColour) or [all], not {self.targets}")
        if "all" in self.targets and len(self.targets) > 1:
            raise ValueError(f"category targets: 'all' stands alone, not in {self.targets}")
        if self.inputs not in INPUTS:
            raise ValueError(f"category inputs must be one of {INPUTS}, not {self.inputs!r}")


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


class CategoryCollator:
    def __init__(self, pairs: PairInputs, inputs: str):
        self.pairs, self.inputs = pairs, inputs
        tok = pairs.processor.tokenizer
        self.empty = np.array([tok.cls_token_id, tok.sep_token_id])

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        idx = [it["index"] for it in items]
        text_ids = [self.empty] * len(idx) if self.inputs == "image" else None
        batch = self.pairs.batch(idx, idx, text_ids=text_ids)
        for key in items[0]:
            if key.endswith("_labels"):
                batch[key] = torch.tensor([int(it[key]) for it in items])
        return batch


class CategoryTask(FinetuneTask):
    """Kaleido-BERT + one linear classifier per target on the pooled [CLS]."""

    kind = "category"
    config_class = CategoryConfig

    def __init__(self, model: KaleidoBertModel, cfg: CategoryConfig, labels: dict[str, list[str]]):
        super().__init__(model, cfg)
        self.labels = {t: list(names) for t, names in labels.items()}
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifiers = nn.ModuleDict({t: nn.Linear(model.config.hidden_size, len(self.labels[t]))
                                          for t in self.labels})

    @classmethod
    def build(cls, model, cfg, info):
        return cls(model, cfg, info["labels"])

    def extras(self) -> dict:
        return {"labels": self.labels}

    def logits(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(batch["input_ids"], batch["patch_features"], batch["patch_positions"],
                         batch["attention_mask"])
        pooled = self.dropout(out.pooled)
        return {t: head(pooled).float() for t, head in self.classifiers.items()}

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
