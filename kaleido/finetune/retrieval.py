"""Image-text retrieval (ITR and TIR) fine-tuned from the ITM head (DESIGN.md stage 8).

Each training item is one product's true pair plus negatives: its image with other
products' texts and its text with other products' images, from the same subcategory
first (the pairs KB-101 tests). ImageBERT's three losses are options:

- ``bce``: binary cross-entropy on every pair's match logit;
- ``softmax``: cross-entropy over the 1 positive + k negatives of an item;
- ``triplet``: hinge ``max(0, margin - s_pos + s_neg)`` against each negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kaleido.finetune.base import FinetuneTask
from kaleido.finetune.pairs import PairInputs
from kaleido.model.modeling import KaleidoBertModel
from kaleido.pretrain.corruptions import NegativeSampler
from kaleido.pretrain.heads import ITMHead
from kaleido.pretrain.task import pretrained_head_state

LOSSES = ("bce", "softmax", "triplet")


@dataclass
class RetrievalConfig:
    """Retrieval fine-tuning."""

    loss: str = "softmax"        # bce | softmax (1 positive + k negatives) | triplet
    text_negatives: int = 2      # per item: the product's image with other products' texts
    image_negatives: int = 2     # per item: the product's text with other products' images
    margin: float = 0.2          # triplet margin (on the match log-odds)
    hard_negatives: bool = True  # same subcategory first, then category, then any (else any product)
    hard_ratio: float = 1.0      # with hard_negatives: share of negatives drawn that way (rest: any product)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"retrieval loss must be one of {LOSSES}, not {self.loss!r}")
        if not 0.0 <= self.hard_ratio <= 1.0:
            raise ValueError(f"retrieval hard_ratio must lie in [0, 1], not {self.hard_ratio}")
        if self.text_negatives + self.image_negatives < 1:
            raise ValueError("retrieval needs at least one negative per item")


class RetrievalDataset(Dataset):
    """Item ``i``: ``images`` and ``texts`` (G,) product indices, pair 0 the true one."""

    def __init__(self, pairs: PairInputs, cfg: RetrievalConfig, seed: int = 0):
        self.pairs, self.cfg, self.seed, self.epoch = pairs, cfg, seed, 0
        products = pairs.products
        self.hard = NegativeSampler(np.array([p.subcategory or "" for p in products]),
                                    np.array([p.category or "" for p in products]))
        self.any = NegativeSampler(np.zeros(len(products), dtype=int), np.zeros(len(products), dtype=int))
        self.hard_ratio = cfg.hard_ratio if cfg.hard_negatives else 0.0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def _negative(self, i: int, rng) -> int:
        sampler = self.hard if rng.random() < self.hard_ratio else self.any
        return sampler.sample(i, rng)

    def _others(self, i: int, k: int, rng) -> list[int]:
        out: list[int] = []
        for _ in range(8 * k):  # distinct where the pool allows
            if len(out) == k:
                break
            j = self._negative(i, rng)
            if j not in out:
                out.append(j)
        while len(out) < k:
            out.append(self._negative(i, rng))
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        texts = self._others(i, self.cfg.text_negatives, rng)
        images = self._others(i, self.cfg.image_negatives, rng)
        return {"images": np.array([i] + [i] * len(texts) + images),
                "texts": np.array([i] + texts + [i] * len(images))}


class PairCollator:
    """Flattens items of G pairs into one batch of B*G model inputs (``group_size`` = G)."""

    def __init__(self, pairs: PairInputs):
        self.pairs = pairs

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        images = np.concatenate([it["images"] for it in items])
        texts = np.concatenate([it["texts"] for it in items])
        batch = self.pairs.batch(images, texts)
        batch["group_size"] = torch.tensor(len(items[0]["images"]))
        return batch


class RetrievalTask(FinetuneTask):
    """Kaleido-BERT + the ITM head; the score of a pair is its match log-odds."""

    kind = "retrieval"
    config_class = RetrievalConfig

    def __init__(self, model: KaleidoBertModel, cfg: RetrievalConfig):
        super().__init__(model, cfg)
        self.itm = ITMHead(model.config)

    def init_from_pretraining(self, path: str | Path) -> bool:
        """Start from the pre-trained ITM head saved beside ``path`` (when there is one)."""
        state = pretrained_head_state(path, "itm")
        if state:
            self.itm.load_state_dict(state)
        return bool(state)

    def score(self, batch: dict) -> torch.Tensor:
        """(N,) match log-odds of the N pairs of ``batch``."""
        out = self.model(batch["input_ids"], batch["patch_features"], batch["patch_positions"],
                         batch["attention_mask"])
        logits = self.itm.logits(out).float()
        return logits[:, 1] - logits[:, 0]

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        g = int(batch["group_size"])
        scores = self.score(batch).view(-1, g)                         # (B, G): column 0 is true
        if self.cfg.loss == "softmax":
            loss = F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
        elif self.cfg.loss == "bce":
            labels = torch.zeros_like(scores)
            labels[:, 0] = 1
            loss = F.binary_cross_entropy_with_logits(scores, labels)
        else:
            loss = F.relu(self.cfg.margin - scores[:, :1] + scores[:, 1:]).mean()
        acc = (scores.argmax(1) == 0).float().mean().detach()
        return {"loss": loss, "retrieval_loss": loss.detach(), "retrieval_acc": acc}
