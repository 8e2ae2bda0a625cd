"""Fine-tuning task kinds by name (used to load a saved task folder)."""

from kaleido.finetune.caption import CaptionTask
from kaleido.finetune.category import CategoryTask
from kaleido.finetune.multitask import MultitaskTask
from kaleido.finetune.retrieval import RetrievalTask

TASKS = {cls.kind: cls for cls in (RetrievalTask, CategoryTask, CaptionTask, MultitaskTask)}
