"""Fashion captioning (FC) from the fine-tuned encoder.

``seq2seq`` (VLP / Oscar style, the default): patches attend to patches only, each
text token to every patch and to the tokens before it; the hidden state of token t
predicts token t+1. Decoding is greedy or beam search, left to right from ``[CLS]``.

``mask_all`` (the authors' answer in their issues): the text is ``[CLS]`` + L ``[MASK]``
+ ``[SEP]`` with full attention, and every position predicts its title token at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kaleido.finetune.base import FinetuneTask
from kaleido.finetune.pairs import PairInputs
from kaleido.model.modeling import KaleidoBertModel
from kaleido.pretrain.heads import AMLMHead
from kaleido.pretrain.task import pretrained_head_state

MODES = ("seq2seq", "mask_all")


@dataclass
class CaptionConfig:
    """Caption fine-tuning and decoding."""

    mode: str = "seq2seq"    # seq2seq (left to right) | mask_all (predict every masked token at once)
    max_len: int = 24        # most generated tokens
    beam_size: int = 1       # decoding beam (1 = greedy); seq2seq only
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"caption mode must be one of {MODES}, not {self.mode!r}")


def seq2seq_pattern(text_len: int, num_patches: int) -> torch.Tensor:
    """(T+P, T+P) boolean: who may attend to whom under the left-to-right caption mask.

    Patches see patches; text token t sees every patch and the text tokens 0..t.
    """
    n = text_len + num_patches
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, text_len:] = True                                         # everyone sees the patches
    allowed[:text_len, :text_len] = torch.ones(text_len, text_len, dtype=torch.bool).tril()
    return allowed


class CaptionCollator:
    """Items are product indices; the batch holds their titles and patches."""

    def __init__(self, pairs: PairInputs, cfg: CaptionConfig):
        self.pairs, self.cfg = pairs, cfg
        tok = pairs.processor.tokenizer
        self.cls, self.sep, self.mask, self.pad = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.pad_token_id

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in items]
        if self.cfg.mode == "seq2seq":
            batch = self.pairs.batch(idx, idx)
            ids = batch["input_ids"]
            labels = torch.full_like(ids, -100)
            labels[:, :-1] = ids[:, 1:]                                   # token t predicts token t+1
            labels[:, :-1][batch["attention_mask"][:, 1:] == 0] = -100
            batch["caption_labels"] = labels
            return batch
        length = self.cfg.max_len + 2
        targets = np.full((len(idx), length), self.pad, dtype=np.int64)
        for row, i in enumerate(idx):
            title = self.pairs.text_ids[i][1:-1][:self.cfg.max_len]
            targets[row, 1:1 + len(title)] = title
            targets[row, 1 + len(title)] = self.sep                     # predict the end too
        inputs = np.full_like(targets, self.mask)
        inputs[:, 0], inputs[:, -1] = self.cls, self.sep
        batch = self.pairs.batch(idx, idx, text_ids=list(inputs))
        labels = torch.from_numpy(targets)
        labels[:, 0] = labels[:, -1] = -100
        labels[labels == self.pad] = -100
        batch["caption_labels"] = labels
        return batch


class CaptionTask(FinetuneTask):
    """Kaleido-BERT + BERT's LM head (decoder tied to the word embeddings)."""

    kind = "caption"
    config_class = CaptionConfig
    tied_keys = ("lm.decoder.weight",)

    def __init__(self, model: KaleidoBertModel, cfg: CaptionConfig):
        super().__init__(model, cfg)
        self.lm = AMLMHead(model.config, model.word_embeddings)

    def init_from_pretraining(self, path: str | Path) -> bool:
        """Start from the pre-trained AMLM head (transform and bias) when it was saved."""
        state = pretrained_head_state(path, "amlm")
        self.lm.load_state_dict(state, strict=False)
        return bool(state)

    def _hidden(self, batch: dict, causal: bool) -> torch.Tensor:
        t = batch["input_ids"].shape[1]
        pattern = None
        if causal:
            pattern = seq2seq_pattern(t, batch["patch_features"].shape[1]).to(batch["input_ids"].device)
        out = self.model(batch["input_ids"], batch["patch_features"], batch["patch_positions"],
                         batch["attention_mask"], attention_pattern=pattern)
        return out.text_hidden                                            # (B, T, H)

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.decoder(self.lm.transform(hidden)).float()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        hidden = self._hidden(batch, causal=self.cfg.mode == "seq2seq")
        labels = batch["caption_labels"]
        chosen = labels != -100
        logits = self.vocab_logits(hidden[chosen])                        # (N, V)
        loss = F.cross_entropy(logits, labels[chosen], label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(1) == labels[chosen]).float().mean().detach()
        return {"loss": loss, "caption_loss": loss.detach(), "caption_acc": acc}

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, patch_features: torch.Tensor, patch_positions: torch.Tensor, cls_id: int,
                 sep_id: int, mask_id: int | None = None) -> list[list[int]]:
        """Token ids of a caption for each image (without [CLS] / [SEP]).

        Args:
            patch_features: (B, P, D); patch_positions: (B, P, 5).
            cls_id, sep_id: the tokenizer's [CLS] and [SEP]; mask_id for ``mask_all``.
        """
        if self.cfg.mode == "mask_all":
            return self._generate_mask_all(patch_features, patch_positions, cls_id, sep_id, mask_id)
        if self.cfg.beam_size > 1:
            return [self._beam(patch_features[i:i + 1], patch_positions[i:i + 1], cls_id, sep_id)
                    for i in range(len(patch_features))]
        b, device = len(patch_features), patch_features.device
        ids = torch.full((b, 1), cls_id, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for _ in range(self.cfg.max_len):
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "patch_features": patch_features,
                     "patch_positions": patch_positions}
            nxt = self.vocab_logits(self._hidden(batch, causal=True)[:, -1]).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, sep_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == sep_id
            if done.all():
                break
        return [_strip(row.tolist()[1:], sep_id) for row in ids]

    def _beam(self, feats, positions, cls_id, sep_id) -> list[int]:
        k = self.cfg.beam_size
        beams = [([cls_id], 0.0)]
        finished: list[tuple[list[int], float]] = []
        for _ in range(self.cfg.max_len):
            ids = torch.tensor([b[0] for b in beams], device=feats.device)
            n = len(beams)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "patch_features": feats.expand(n, -1, -1), "patch_positions": positions.expand(n, -1, -1)}
            logp = F.log_softmax(self.vocab_logits(self._hidden(batch, causal=True)[:, -1]), -1)
            top = torch.topk(logp, k, dim=-1)
            candidates = [(beams[i][0] + [int(t)], beams[i][1] + float(s))
                          for i in range(n) for s, t in zip(top.values[i], top.indices[i])]
            candidates.sort(key=lambda c: c[1], reverse=True)
            beams = []
            for seq, score in candidates:
                (finished if seq[-1] == sep_id else beams).append((seq, score))
                if len(beams) == k:
                    break
            if not beams or len(finished) >= k:
                break
        pool = finished or beams
        best = max(pool, key=lambda c: c[1] / max(1, len(c[0]) - 1))  # length-normalised log-prob
        return _strip(best[0][1:], sep_id)

    def _generate_mask_all(self, feats, positions, cls_id, sep_id, mask_id) -> list[list[int]]:
        b, length = len(feats), self.cfg.max_len + 2
        ids = torch.full((b, length), mask_id, dtype=torch.long, device=feats.device)
        ids[:, 0], ids[:, -1] = cls_id, sep_id
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "patch_features": feats,
                 "patch_positions": positions}
        pred = self.vocab_logits(self._hidden(batch, causal=False)[:, 1:-1]).argmax(-1)
        return [_strip(row.tolist(), sep_id) for row in pred]


def _strip(ids: list[int], sep_id: int) -> list[int]:
    return ids[:ids.index(sep_id)] if sep_id in ids else ids
