"""One generic training loop: tasks carry the differences, the loop carries the plumbing.

    from kaleido.training import TrainConfig, Trainer
    result = Trainer(task, train_set, TrainConfig(epochs=3), "runs/x", val_data=val_set).fit()
"""

from .config import TrainConfig
from .logs import CSVLog, TensorBoardLog, plot_loss_curves
from .loop import (TrainResult, Trainer, is_main_process, move_to_device, param_groups,
                   resolve_device, resolve_precision)
from .sampler import ResumableSampler
from .schedule import SCHEDULES, build_scheduler, lr_factor, resolve_warmup

__all__ = [
    "CSVLog", "ResumableSampler", "SCHEDULES", "TensorBoardLog", "TrainConfig", "TrainResult",
    "Trainer", "build_scheduler", "is_main_process", "lr_factor", "move_to_device",
    "param_groups", "plot_loss_curves", "resolve_device", "resolve_precision", "resolve_warmup",
]
