"""Downstream tasks (DESIGN.md stage 8): retrieval from the ITM head, category and
subcategory classifiers, and captioning, each fine-tuned on the shared training loop.

    from kaleido.finetune import FinetuneConfig, finetune, load_task
    finetune("retrieval", cfg, catalog, cache, "runs/pretrain/final", "runs/ft/retrieval", split_file=...)
    task = load_task("runs/ft/retrieval/final")
"""

from kaleido.finetune.base import FinetuneTask, load_task, read_task_info
from kaleido.finetune.caption import CaptionConfig, CaptionTask, seq2seq_pattern
from kaleido.finetune.category import CategoryConfig, CategoryTask
from kaleido.finetune.config import KINDS, FinetuneConfig, FinetuneDataConfig
from kaleido.finetune.pairs import PairInputs
from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
from kaleido.finetune.run import finetune, load_processor, split_products

__all__ = ["KINDS", "CaptionConfig", "CaptionTask", "CategoryConfig", "CategoryTask", "FinetuneConfig",
           "FinetuneDataConfig", "FinetuneTask", "PairInputs", "RetrievalConfig", "RetrievalTask",
           "finetune", "load_processor", "load_task", "read_task_info", "seq2seq_pattern", "split_products"]
