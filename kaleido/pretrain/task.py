"""The pre-training task: the encoder, the heads that are on, and their weighted sum."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

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
        self.heads = nn.ModuleDict({name: build_head(name, model.config, model.word_embeddings)
                                    for name in self.loss_weights})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(**{k: batch[k] for k in MODEL_INPUTS})
        results: dict[str, torch.Tensor] = {}
        for head in self.heads.values():
            results.update(head(out, batch))
        results["loss"] = sum(self.loss_weights[n] * results[f"{n}_loss"] for n in self.heads)
        return results

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
