"""What the fine-tuning tasks share: saving the encoder with one task head, and loading it back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from kaleido.model import create_model
from kaleido.model.modeling import KaleidoBertModel

HEAD_NAME = "finetune_head.safetensors"
TASK_NAME = "finetune.json"


class FinetuneTask(nn.Module):
    """An encoder plus the modules of one downstream task (subclasses define ``kind``).

    Saved as a Kaleido-BERT folder (``config.json``, ``model.safetensors``) plus
    ``finetune_head.safetensors`` and ``finetune.json`` (task kind, config, extras such
    as label names); :func:`load_task` reads it back.
    """

    kind = ""
    config_class: type = object

    def __init__(self, model: KaleidoBertModel, cfg):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def extras(self) -> dict:
        """JSON-able things the task needs besides weights (e.g. label names)."""
        return {}

    #: head parameters that are the encoder's own tensors (e.g. a decoder tied to the word
    #: embeddings): saved once, with the encoder.
    tied_keys: tuple[str, ...] = ()

    @classmethod
    def build(cls, model: KaleidoBertModel, cfg, info: dict) -> "FinetuneTask":
        """The task around ``model`` from its config and the saved ``finetune.json``."""
        return cls(model, cfg)

    def head_state(self) -> dict:
        """The head's tensors: everything but the encoder (saved with it) and tied tensors."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("model.") and k not in self.tied_keys}

    def load_head_state(self, state: dict, where: str) -> None:
        """Load :meth:`head_state` back; a missing or unexpected tensor is an error naming it."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("model.") and k not in self.tied_keys]
        if missing or unexpected:
            raise ValueError(f"{where}: head weights do not fit (missing {missing}, unexpected {unexpected})")

    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = self.model.save_pretrained(path)
        save_file(self.head_state(), str(path / HEAD_NAME))
        (path / TASK_NAME).write_text(json.dumps(
            {"task": self.kind, "config": dataclasses.asdict(self.cfg), **self.extras()}, indent=2) + "\n")
        return path


def read_task_info(path: str | Path) -> dict:
    file = Path(path) / TASK_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {TASK_NAME}; not a fine-tuned Kaleido-BERT folder "
                                "(`kaleido finetune` writes them)")
    return json.loads(file.read_text())


def load_task(path: str | Path, kind: str | None = None) -> FinetuneTask:
    """A fine-tuned task folder -> the task module (eval mode).

    Args:
        path: the folder ``kaleido finetune`` wrote (``OUT/final``).
        kind: the task wanted (``retrieval``, ``category``, ``caption``); None takes the
            folder's own. A multitask folder gives the one asked for, around the shared encoder.

    Raises:
        ValueError: the folder holds another task, or its head weights do not fit.
    """
    from safetensors.torch import load_file

    from kaleido.finetune.registry import TASKS

    info = read_task_info(path)
    if info["task"] not in TASKS:
        raise ValueError(f"{path}: unknown fine-tuning task {info['task']!r}")
    cls = TASKS[info["task"]]
    cfg = cls.config_class(**info["config"])
    task = cls.build(create_model(pretrained=str(path)), cfg, info)
    task.load_head_state(load_file(str(Path(path) / HEAD_NAME)), str(path))
    task.eval()
    if kind is None or kind == task.kind:
        return task
    if kind in getattr(task, "tasks", {}):
        return task.tasks[kind]
    raise ValueError(f"{path} is a fine-tuned {task_kinds(info)} model, not {kind}")


def task_kinds(info: dict) -> str:
    """The task(s) a ``finetune.json`` holds, for messages: ``retrieval`` or ``multitask (...)``."""
    if "tasks" in info:
        return f"{info['task']} ({', '.join(info['tasks'])})"
    return info["task"]
