"""Pre-training (DESIGN.md stages 5 and 7): alignment guided masking, the patch corruptions,
ITM negatives, the seven heads and the task that sums them.

    from kaleido.pretrain import PretrainConfig, pretrain
    pretrain(cfg, catalog, "runs/cache/fashion-products", "runs/pretrain", split_file="runs/split")
"""

from kaleido.pretrain.config import PretrainConfig, PretrainDataConfig, TaskConfig
from kaleido.pretrain.data import PretrainDataset, collate_pretrain
from kaleido.pretrain.heads import HEAD_NAMES, build_head
from kaleido.pretrain.masking import MaskingConfig, MaskPlan, mask_tokens, plan_masks
from kaleido.pretrain.run import build_task, pretrain
from kaleido.pretrain.task import PretrainTask

__all__ = ["HEAD_NAMES", "MaskPlan", "MaskingConfig", "PretrainConfig", "PretrainDataConfig",
           "PretrainDataset", "PretrainTask", "TaskConfig", "build_head", "build_task",
           "collate_pretrain", "mask_tokens", "plan_masks", "pretrain"]
