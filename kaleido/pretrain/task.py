"""The pre-training task: the encoder, the heads that are on, and their weighted sum."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kaleido.contrastive import hardest_negatives, sample_hard_negatives
from kaleido.model.modeling import KaleidoBertModel
from kaleido.pretrain.config import TaskConfig
from kaleido.pretrain.heads import build_head

HEADS_NAME = "pretrain_heads.safetensors"
TASKS_NAME = "pretrain_tasks.json"

TIED_DECODER = "amlm.decoder.weight"
MODEL_INPUTS = ("input_ids", "patch_features", "patch_positions", "attention_mask")


class PretrainTask(nn.Module):
    """Kaleido-BERT + the pre-training heads.

    ``task(batch)`` returns every head's ``<name>_loss`` (unweighted, for the logs), the
    heads' accuracies, and ``loss``: the weighted sum that is optimised.
    """

    def __init__(self, model: KaleidoBertModel, tasks: TaskConfig):
        super().__init__()
        self.model = model
        self.tasks = tasks
        self.loss_weights = tasks.weights()
        if not self.loss_weights:
            raise ValueError("every pre-training task has weight 0; switch at least one on")
        self.heads = nn.ModuleDict({name: build_head(name, model.config, model.word_embeddings, tasks.patch_loss)
                                    for name in self.loss_weights})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(**{k: batch[k] for k in MODEL_INPUTS})
        results: dict[str, torch.Tensor] = {}
        clean = "clean_input_ids" in batch
        for name, head in self.heads.items():
            if not (clean and name in ("itm", "itc", "wpa")):
                results.update(head(out, batch))
        if clean:
            results.update(self._clean_pair_losses(batch))
        results["loss"] = sum(self.loss_weights[n] * results[f"{n}_loss"] for n in self.heads)
        return results

    def _clean_pair_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """ITC on the unimodal passes and ITM on clean pairs: B positives and B negatives mined
        in the batch (even rows: image i with a hard text; odd rows: text i with a hard image),
        drawn in proportion to softmax of the ITC logits (similarity / temperature) in training, the hardest in
        evaluation; same-title twins are never negatives."""
        ids, mask = batch["clean_input_ids"], batch["clean_attention_mask"]
        feats, pos = batch["clean_patch_features"], batch["patch_positions"]
        groups = batch["title_group"]
        b = len(ids)
        results: dict[str, torch.Tensor] = {}
        sim = torch.zeros(b, b, device=ids.device)  # no ITC: uniform among the non-twins
        if "itc" in self.heads:
            head = self.heads["itc"]
            text, image = head.embed(self.model.encode_text(ids, mask), self.model.encode_patches(feats, pos))
            itc = head(text, image, groups)
            sim = itc.pop("itc_sim") * head.logit_scale.exp().detach().clamp(max=100.0)
            results.update(itc)
        if "itm" not in self.heads:
            return results
        image_of, text_of, labels = self.mine_pairs(sim, groups)
        pair = self.model(ids[text_of], feats[image_of], pos[image_of], mask[text_of])
        results.update(self.heads["itm"](pair, {"itm_labels": labels}))
        if "wpa" in self.heads:  # ViLT's word-patch alignment on the same pairs
            results.update(self.heads["wpa"](pair, {"itm_labels": labels, "attention_mask": mask[text_of]}))
        return results

    def mine_pairs(self, sim: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ITM pairs of a batch of B products: ``(image_of, text_of, labels)``, each (2B,):
        rows 0..B-1 the true pairs, rows B.. one negative per product (even products: a hard
        text for its image, odd products: a hard image for its text)."""
        b = len(sim)
        rows = torch.arange(b, device=sim.device)
        if b < 2:  # a batch of one has no negative to mine
            return rows, rows, torch.ones(b, dtype=torch.long, device=sim.device)
        if self.training:
            neg_text, neg_image = sample_hard_negatives(sim, groups), sample_hard_negatives(sim.t(), groups)
        else:  # deterministic validation: the hardest non-twin
            neg_text, neg_image = hardest_negatives(sim, groups), hardest_negatives(sim.t(), groups)
        even = rows % 2 == 0
        image_of = torch.cat([rows, torch.where(even, rows, neg_image)])
        text_of = torch.cat([rows, torch.where(even, neg_text, rows)])
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)]).to(sim.device)
        return image_of, text_of, labels

    def save_pretrained(self, path: str | Path) -> Path:
        """The encoder as a Kaleido-BERT folder, plus the heads (to continue pre-training)."""
        from safetensors.torch import save_file

        path = self.model.save_pretrained(path)
        # The AMLM decoder is the word embedding matrix (tied): saved once, with the encoder.
        state = {k: v.detach().contiguous() for k, v in self.heads.state_dict().items()
                 if k != TIED_DECODER}
        save_file(state, str(path / HEADS_NAME))
        (path / TASKS_NAME).write_text(json.dumps(self.loss_weights, indent=2) + "\n")
        return path

    def load_heads(self, path: str | Path) -> list[str]:
        """Load the heads saved beside a checkpoint (multi-stage pre-training); returns the heads loaded."""
        from safetensors.torch import load_file

        file = Path(path) / HEADS_NAME
        if not file.is_file():
            return []
        state = load_file(str(file))
        own = self.heads.state_dict()
        fits = {k: v for k, v in state.items()
                if k in own and k != TIED_DECODER and own[k].shape == v.shape}
        self.heads.load_state_dict(fits, strict=False)
        return sorted({k.split(".")[0] for k in fits})


def pretrained_head_state(path: str | Path, head: str) -> dict[str, torch.Tensor]:
    """The saved weights of one pre-training head (``itm``, ``amlm``, ...) beside a checkpoint,
    keys without the head's prefix; empty when the folder has none."""
    from safetensors.torch import load_file

    file = Path(path) / HEADS_NAME
    if not file.is_file():
        return {}
    prefix = f"{head}."
    return {k.removeprefix(prefix): v for k, v in load_file(str(file)).items() if k.startswith(prefix)}
