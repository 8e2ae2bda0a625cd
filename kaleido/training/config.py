"""The settings of the generic training loop (:class:`TrainConfig`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .schedule import SCHEDULES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """How :class:`~kaleido.training.Trainer` optimises a task.

    Attributes:
        epochs: passes over the training set (ignored when ``max_steps > 0``).
        max_steps: optimiser steps to take; > 0 wins over ``epochs`` (stops mid-epoch,
            or runs more epochs than ``epochs``).
        batch_size: samples per micro-batch, per process.
        grad_accum: micro-batches summed into one optimiser step.
        lr: peak AdamW learning rate (reached at the end of warm-up).
        weight_decay: AdamW decoupled weight decay on matrices; never on 1-D parameters
            (biases, norm weights, scalars).
        betas: AdamW ``(beta1, beta2)``.
        warmup_steps: optimiser steps of linear warm-up from lr 0.
        warmup_ratio: warm-up as a fraction of the total steps, used when ``warmup_steps == 0``.
        schedule: lr after warm-up: ``linear`` or ``cosine`` decay to 0 at the last step,
            or ``constant``.
        max_grad_norm: clip the global gradient norm to this (0 = no clipping).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32``, ``bf16``
            (autocast) or ``fp16`` (autocast + gradient scaling).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under
            torchrun a CUDA run always uses ``cuda:LOCAL_RANK``.
        seed: seeds dropout (``seed + rank``), the shuffling and the data loader workers.
        num_workers: data loader worker processes (0 = load in the training process).
        num_threads: torch CPU threads during ``fit`` (0 = torch's default).
        log_every: optimiser steps between rows of ``log.csv`` / TensorBoard (each row
            averages the steps since the previous one).
        save_every: optimiser steps between checkpoints; one is also written at every
            epoch end and at the end of training.
        eval_every: optimiser steps between validation passes; 0 = at each epoch end.
            Either way the last step is validated (when a val set is given).
        find_unused_parameters: passed to DistributedDataParallel (tasks whose heads do
            not all run on every batch).
        tensorboard: also write TensorBoard scalars under ``out_dir/tb`` (when installed).
    """

    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    num_threads: int = 0
    log_every: int = 10
    save_every: int = 200
    eval_every: int = 0
    find_unused_parameters: bool = False
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "num_workers", "num_threads", "eval_every",
                     "lr", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, "
                             f"got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, "
                             f"got {self.precision!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"TrainConfig.device must be auto, cpu, cuda or cuda:N, "
                             f"got {self.device!r}")
