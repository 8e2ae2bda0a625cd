"""One encoder fine-tuned for every downstream task at once: the serving checkpoint.

The retrieval (ITM), category (+ subcategory + attributes) and caption tasks of this
package keep their own heads, datasets and losses; here they share one Kaleido-BERT. Each
training step takes one batch of every task and adds their losses (``weights``), so the
demo and the tagging job hold one encoder in memory instead of three. The folder it saves
loads as any of its tasks: ``load_task(path, "retrieval")`` is a :class:`RetrievalTask`
around the shared encoder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from kaleido.finetune.base import HEAD_NAME, TASK_NAME, FinetuneTask
from kaleido.model.modeling import KaleidoBertModel

SUBTASKS = ("retrieval", "category", "caption")


@dataclass
class MultitaskConfig:
    """Which tasks share the encoder, and the weight of each one's loss (default 1)."""

    tasks: list[str] = field(default_factory=lambda: list(SUBTASKS))
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        unknown = (set(self.tasks) - set(SUBTASKS)) | (set(self.weights) - set(self.tasks))
        if not self.tasks or unknown or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"multitask.tasks must be distinct tasks of {SUBTASKS} and multitask.weights "
                             f"keys among them; got tasks={self.tasks}, weights={dict(self.weights)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"multitask.weights must be >= 0, got {dict(self.weights)}")

    def weight(self, kind: str) -> float:
        return float(self.weights.get(kind, 1.0))


class MultitaskDataset(Dataset):
    """Item ``i`` is item ``i`` (modulo its length) of every task's dataset."""

    def __init__(self, datasets: dict[str, Dataset]):
        self.datasets = datasets

    def __len__(self) -> int:
        return max(len(d) for d in self.datasets.values())

    def __getitem__(self, i: int) -> dict:
        return {kind: data[i % len(data)] for kind, data in self.datasets.items()}

    def set_epoch(self, epoch: int) -> None:
        for data in self.datasets.values():
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)


class MultitaskCollator:
    """A list of :class:`MultitaskDataset` items -> ``{task: that task's batch}``."""

    def __init__(self, collators: dict):
        self.collators = collators

    def __call__(self, items: list[dict]) -> dict[str, dict]:
        return {kind: collate([item[kind] for item in items]) for kind, collate in self.collators.items()}


class MultitaskTask(FinetuneTask):
    """One encoder, the heads of several tasks; the loss is the weighted sum of theirs."""

    kind = "multitask"
    config_class = MultitaskConfig

    def __init__(self, model: KaleidoBertModel, cfg: MultitaskConfig, tasks: dict[str, FinetuneTask]):
        super().__init__(model, cfg)
        if any(task.model is not model for task in tasks.values()):
            raise ValueError("the tasks of a multitask model must share its encoder")
        self.tasks = nn.ModuleDict(tasks)

    def lr_scales(self) -> dict[str, float]:
        """The tasks' learning-rate factors: the encoder's (``model.``) as they are, a head's
        under its task's name (``tasks.category.classifiers.``)."""
        scales: dict[str, float] = {}
        for kind, task in self.tasks.items():
            for prefix, factor in (task.lr_scales() if hasattr(task, "lr_scales") else {}).items():
                scales[prefix if prefix.startswith("model.") else f"tasks.{kind}.{prefix}"] = factor
        return scales

    def init_from_pretraining(self, path: str | Path) -> dict[str, bool]:
        return {kind: task.init_from_pretraining(path) for kind, task in self.tasks.items()
                if hasattr(task, "init_from_pretraining")}

    def forward(self, batch: dict[str, dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        loss = 0.0
        for kind, task in self.tasks.items():
            result = task(batch[kind])
            loss = loss + self.cfg.weight(kind) * result.pop("loss")
            for name, value in result.items():
                out[name if name not in out else f"{kind}_{name}"] = value
        return {"loss": loss, **out}

    # ------------------------------------------------------------------ save / load
    def head_state(self) -> dict[str, torch.Tensor]:
        """Every task's head tensors, ``<task>.<name>`` (not the shared encoder, not tied ones)."""
        return {f"{kind}.{k}": v for kind, task in self.tasks.items() for k, v in task.head_state().items()}

    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = self.model.save_pretrained(path)
        save_file(self.head_state(), str(path / HEAD_NAME))
        info = {"task": self.kind, "config": dataclasses.asdict(self.cfg),
                "tasks": {kind: {"config": dataclasses.asdict(task.cfg), **task.extras()}
                          for kind, task in self.tasks.items()}}
        (path / TASK_NAME).write_text(json.dumps(info, indent=2) + "\n")
        return path

    @classmethod
    def build(cls, model: KaleidoBertModel, cfg: MultitaskConfig, info: dict) -> "MultitaskTask":
        from kaleido.finetune.registry import TASKS

        tasks = {}
        for kind, sub in info["tasks"].items():
            sub_cls = TASKS[kind]
            tasks[kind] = sub_cls.build(model, sub_cls.config_class(**sub["config"]), sub)
        return cls(model, cfg, tasks)

    def load_head_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load :meth:`head_state` back; anything missing or left over is an error naming it."""
        for kind, task in self.tasks.items():
            task.load_head_state({k[len(kind) + 1:]: v for k, v in state.items() if k.startswith(f"{kind}.")},
                                 f"{where} ({kind})")
        stray = [k for k in state if k.split(".", 1)[0] not in self.tasks]
        if stray:
            raise ValueError(f"{where}: head weights of tasks it does not have: {stray[:3]}")
