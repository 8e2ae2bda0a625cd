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
from kaleido.contrastive import hardest_negatives, sample_hard_negatives, title_codes
from kaleido.pretrain.heads import ITCHead, ITMHead, interaction_kind
from kaleido.pretrain.task import pretrained_head_state

LOSSES = ("bce", "softmax", "triplet")
MINING = ("dataset", "itc", "first_stage")


@dataclass
class RetrievalConfig:
    """Retrieval fine-tuning."""

    loss: str = "softmax"        # bce | softmax (1 positive + k negatives) | triplet
    text_negatives: int = 2      # per item: the product's image with other products' texts
    image_negatives: int = 2     # per item: the product's text with other products' images
    margin: float = 0.2          # triplet margin (on the match log-odds)
    hard_negatives: bool = True  # same subcategory first, then category, then any (else any product)
    hard_ratio: float = 1.0      # with hard_negatives: share of negatives drawn that way (rest: any product)
    # "dataset": negatives drawn by the dataset (hard_negatives / hard_ratio above); "itc": each
    # batch holds true pairs only, and the negatives are mined in the batch from the image-text
    # contrastive head's similarities (softmax-weighted in training, the hardest in validation,
    # never a same-title twin); the ITC head (from pre-training when it had one) trains alongside
    # "first_stage": negatives sampled in proportion to the softmax of an aligned contrastive
    # model's logits (``first_stage``: a dual encoder RUN/final or a linear-probe run) over each
    # product's ``mining_pool`` most similar other products (never a same-title twin): ALBEF's
    # "align before fuse", with the alignment of the model that recalls the candidates ITM re-orders
    mining: str = "dataset"
    itc_weight: float = 1.0      # mining=itc: weight of the ITC loss beside the retrieval loss
    first_stage: str = ""        # mining=first_stage: the aligned model's folder
    # the feature cache the first stage reads ("" = the fine-tuning cache); another one when the
    # encoder's inputs differ from the first stage's (a fixed-grid or pixel cache, a patch dual)
    first_stage_cache: str = ""
    mining_pool: int = 32        # mining=first_stage: candidates kept per product
    mining_temperature: float = 1.0  # mining=first_stage: softmax(logit / T) over the pool (> 1 flattens)
    # mining=first_stage: share of negatives drawn from any product instead of the pool: easy
    # negatives that teach the coarse match while the mined ones teach the fine one
    mining_random: float = 0.0
    # learning-rate factor of the pre-trained transformer layers and text embeddings; the patch
    # embeddings and the heads, which start far from where they end, keep the full rate
    encoder_lr_scale: float = 1.0
    # a text-image term of the ITM head beside the pooled state (kaleido.pretrain.heads.ITMHead):
    # none | product (elementwise product of the mean text and mean patch hidden states; true
    # = product) | bilinear (a low-rank bilinear form of the two: a dual-encoder score inside the
    # fused pass, zero at step 0)
    itm_interaction: str = "none"
    # add the first stage's logit (retrieval.first_stage) to every pair's score in training,
    # so ITM learns a residual on top of it: what the aligned model gets wrong (boosting);
    # evaluate with `kaleido eval ... dual=SAME fusion_weights=[1]` to score as trained
    residual: bool = False

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"retrieval loss must be one of {LOSSES}, not {self.loss!r}")
        if not 0.0 <= self.hard_ratio <= 1.0:
            raise ValueError(f"retrieval hard_ratio must lie in [0, 1], not {self.hard_ratio}")
        if self.text_negatives + self.image_negatives < 1:
            raise ValueError("retrieval needs at least one negative per item")
        if self.mining not in MINING:
            raise ValueError(f"retrieval mining must be one of {MINING}, not {self.mining!r}")
        if self.mining == "first_stage" and not self.first_stage:
            raise ValueError("retrieval.mining=first_stage needs retrieval.first_stage=PATH (a `kaleido dual "
                             "train` RUN/final or a `kaleido baseline linear-probe` run)")
        self.itm_interaction = interaction_kind(self.itm_interaction, "retrieval itm_interaction")
        if self.residual and self.mining != "first_stage":
            raise ValueError("retrieval.residual=true needs retrieval.mining=first_stage (the logit it adds)")
        if not 0.0 <= self.mining_random <= 1.0:
            raise ValueError(f"retrieval mining_random must lie in [0, 1], not {self.mining_random}")
        if self.mining_pool < 1 or self.mining_temperature <= 0:
            raise ValueError("retrieval.mining_pool must be >= 1 and retrieval.mining_temperature > 0")


class RetrievalDataset(Dataset):
    """Item ``i``: ``images`` and ``texts`` (G,) product indices, pair 0 the true one."""

    def __init__(self, pairs: PairInputs, cfg: RetrievalConfig, seed: int = 0):
        self.pairs, self.cfg, self.seed, self.epoch = pairs, cfg, seed, 0
        products = pairs.products
        self.hard = NegativeSampler(np.array([p.subcategory or "" for p in products]),
                                    np.array([p.category or "" for p in products]))
        self.any = NegativeSampler(np.zeros(len(products), dtype=int), np.zeros(len(products), dtype=int))
        self.hard_ratio = cfg.hard_ratio if cfg.hard_negatives else 0.0
        self.mined = self.stage = None
        if cfg.mining == "first_stage":
            from kaleido.first_stage import load_first_stage

            if cfg.first_stage_cache:
                from kaleido.patches.cache import FeatureCache

                stage = load_first_stage(cfg.first_stage, products, FeatureCache(cfg.first_stage_cache))
            else:
                stage = load_first_stage(cfg.first_stage, products, pairs.cache)
            self.stage = stage if cfg.residual else None
            titles = [p.title for p in products]
            self.title_groups = title_codes(titles)
            self.mined = {"texts": stage.pool(cfg.mining_pool, titles, "texts"),
                          "images": stage.pool(cfg.mining_pool, titles, "images")}

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

    def _mined(self, i: int, k: int, direction: str, rng) -> list[int]:
        """``k`` negatives of product ``i``: each one with probability ``mining_random`` any
        other product, else from its first-stage pool (distinct, drawn in proportion to
        ``softmax(logit / T)``)."""
        easy = int(rng.binomial(k, self.cfg.mining_random)) if self.cfg.mining_random > 0 else 0
        anyone = [self.any.sample_other_title(i, self.title_groups, rng) for _ in range(easy)]
        return self._from_pool(i, k - easy, direction, rng) + anyone

    def _from_pool(self, i: int, k: int, direction: str, rng) -> list[int]:
        if k == 0:
            return []
        index, logits = self.mined[direction]
        valid = np.isfinite(logits[i])
        cand = index[i][valid]
        if not len(cand):  # every other product shares the title: any product
            return [self.any.sample(i, rng) for _ in range(k)]
        z = logits[i][valid].astype(np.float64) / self.cfg.mining_temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        m = min(k, int(np.count_nonzero(p)))          # a sharp softmax can underflow to zeros
        out = cand[rng.choice(len(cand), size=m, replace=False, p=p)].tolist()
        rest = [int(j) for j in cand if int(j) not in out]  # the pool's next best (it is sorted)
        out += rest[:min(k, len(cand)) - m]
        return out + [int(cand[rng.integers(len(cand))]) for _ in range(k - len(out))]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if self.cfg.mining == "itc":  # the negatives are mined in the batch by the task
            return {"images": np.array([i]), "texts": np.array([i])}
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.mined is not None:
            texts = self._mined(i, self.cfg.text_negatives, "texts", rng)
            images = self._mined(i, self.cfg.image_negatives, "images", rng)
        else:
            texts = self._others(i, self.cfg.text_negatives, rng)
            images = self._others(i, self.cfg.image_negatives, rng)
        item = {"images": np.array([i] + [i] * len(texts) + images),
                "texts": np.array([i] + texts + [i] * len(images))}
        if self.stage is not None:  # residual: the first stage's logit of every pair
            item["prior"] = self.stage.score(item["images"], item["texts"]).astype(np.float32)
        return item


class PairCollator:
    """Flattens items of G pairs into one batch of B*G model inputs (``group_size`` = G)."""

    def __init__(self, pairs: PairInputs):
        self.pairs = pairs
        self.title_groups = title_codes([p.title for p in pairs.products])

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        images = np.concatenate([it["images"] for it in items])
        texts = np.concatenate([it["texts"] for it in items])
        batch = self.pairs.batch(images, texts)
        batch["group_size"] = torch.tensor(len(items[0]["images"]))
        batch["title_group"] = torch.from_numpy(self.title_groups[texts])
        if "prior" in items[0]:
            batch["prior"] = torch.from_numpy(np.concatenate([it["prior"] for it in items]))
        return batch


class RetrievalTask(FinetuneTask):
    """Kaleido-BERT + the ITM head; the score of a pair is its match log-odds."""

    kind = "retrieval"
    config_class = RetrievalConfig

    def __init__(self, model: KaleidoBertModel, cfg: RetrievalConfig):
        super().__init__(model, cfg)
        self.itm = ITMHead(model.config, interaction=cfg.itm_interaction)
        self.itc = ITCHead(model.config) if cfg.mining == "itc" else None

    def lr_scales(self) -> dict[str, float]:
        """``{parameter prefix: learning-rate factor}`` for the shared loop's param groups."""
        if self.cfg.encoder_lr_scale == 1.0:
            return {}
        return {"model.encoder.": self.cfg.encoder_lr_scale, "model.embeddings.": self.cfg.encoder_lr_scale}

    def init_from_pretraining(self, path: str | Path) -> bool:
        """Start from the pre-trained ITM (and ITC) heads saved beside ``path`` (when there are)."""
        state = pretrained_head_state(path, "itm")
        if state:  # a pre-trained head has no interaction term: that part starts fresh
            missing, unexpected = self.itm.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("interaction.") for k in missing):
                raise ValueError(f"{path}: pre-trained ITM head does not fit (missing {missing}, "
                                 f"unexpected {unexpected})")
        itc = pretrained_head_state(path, "itc")
        if self.itc is not None and itc:
            self.itc.load_state_dict(itc)
        return bool(state)

    def score(self, batch: dict) -> torch.Tensor:
        """(N,) match log-odds of the N pairs of ``batch``."""
        out = self.model(batch["input_ids"], batch["patch_features"], batch["patch_positions"],
                         batch["attention_mask"])
        logits = self.itm.logits(out).float()
        return logits[:, 1] - logits[:, 0]

    def _mined_groups(self, batch: dict) -> tuple[dict, dict[str, torch.Tensor]]:
        """ITC on the batch's true pairs, then every product's group of 1 true pair +
        ``text_negatives`` mined texts + ``image_negatives`` mined images (B*G model inputs)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        feats, pos, groups = batch["patch_features"], batch["patch_positions"], batch["title_group"]
        text, image = self.itc.embed(self.model.encode_text(ids, mask), self.model.encode_patches(feats, pos))
        itc = self.itc(text, image, groups)
        logits = itc.pop("itc_sim") * self.itc.logit_scale.exp().detach().clamp(max=100.0)
        rows = torch.arange(len(ids), device=ids.device)
        mine = sample_hard_negatives if self.training else hardest_negatives
        images, texts = [rows], [rows]
        for _ in range(self.cfg.text_negatives):
            images.append(rows)
            texts.append(mine(logits, groups))
        for _ in range(self.cfg.image_negatives):
            images.append(mine(logits.t(), groups))
            texts.append(rows)
        image_of = torch.stack(images, 1).flatten()                    # (B*G,) product-major
        text_of = torch.stack(texts, 1).flatten()
        pairs = {"input_ids": ids[text_of], "attention_mask": mask[text_of],
                 "patch_features": feats[image_of], "patch_positions": pos[image_of],
                 "group_size": torch.tensor(len(images))}
        return pairs, itc

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        extra: dict[str, torch.Tensor] = {}
        if self.itc is not None and int(batch["group_size"]) == 1 and len(batch["input_ids"]) > 1:
            batch, extra = self._mined_groups(batch)
        g = int(batch["group_size"])
        scores = self.score(batch)
        if self.cfg.residual:  # ITM learns what the first stage's logit gets wrong
            if "prior" not in batch:
                raise ValueError("retrieval.residual=true: the batch has no first-stage logits ('prior')")
            scores = scores + batch["prior"].to(scores)
        scores = scores.view(-1, g)                                    # (B, G): column 0 is true
        if self.cfg.loss == "softmax":
            loss = F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
        elif self.cfg.loss == "bce":
            labels = torch.zeros_like(scores)
            labels[:, 0] = 1
            loss = F.binary_cross_entropy_with_logits(scores, labels)
        else:
            loss = F.relu(self.cfg.margin - scores[:, :1] + scores[:, 1:]).mean()
        acc = (scores.argmax(1) == 0).float().mean().detach()
        out = {"retrieval_loss": loss.detach(), "retrieval_acc": acc}
        if extra:
            loss = loss + self.cfg.itc_weight * extra["itc_loss"]
            out.update({"itc_loss": extra["itc_loss"].detach(), "itc_acc": extra["itc_acc"]})
        return {"loss": loss, **out}
