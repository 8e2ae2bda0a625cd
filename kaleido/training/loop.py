"""The one training loop: a task module in, an optimised task and a run folder out.

A *task* is an ``nn.Module`` whose ``forward(batch)`` returns a dict of scalar tensors:
``"loss"`` (what is optimised) plus any ``"<name>_loss"`` components and metrics; the
trainer logs them all. Everything a task needs beyond that (heads, masking, loss weights)
lives in the task, so one loop serves pre-training and every downstream head.

The run folder ``out_dir`` holds::

    train_config.yaml       the resolved TrainConfig
    environment.json        the library versions it ran under (one entry more per change on resume)
    log.csv                 step, epoch, lr, samples_per_s, wall_s, every logged scalar
    loss_curves.png         one subplot per loss (raw, smoothed, val)
    tb/                     TensorBoard scalars (when tensorboard is installed)
    checkpoints/last/       task.safetensors + trainer_state.pt (exact resume)
    final/                  task.save_pretrained(...) when the task has that method

Calling :meth:`Trainer.fit` again on the same ``out_dir`` resumes from ``checkpoints/last``
and, on CPU with ``num_workers=0``, reproduces an uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kaleido.config import save_config
from kaleido.environment import record_environment

from .config import TrainConfig
from .logs import CSVLog, TensorBoardLog, plot_loss_curves
from .sampler import ResumableSampler
from .schedule import build_scheduler, resolve_warmup

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0 inside it (the rank that writes files).

    Before the process group exists, torchrun's ``RANK`` variable decides."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples, nested) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device, non_blocking) for v in obj)
    return obj


def param_groups(module: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """AdamW groups: decay on parameters of 2+ dims, none on 1-D ones (biases, norms).

    A task may define ``lr_scales() -> {parameter name prefix: factor}`` (e.g. a pre-trained
    text tower at a fifth of the rate of a fresh image tower): the parameters under a prefix
    then get their own groups at ``lr x factor`` (the schedule scales every group alike).

    Args:
        module: the task; frozen parameters (``requires_grad=False``) are left out.
        weight_decay: decay of the matrices' groups.
        lr: the base learning rate (needed only when the task has ``lr_scales``).

    Returns:
        ``[{"params": [...], "weight_decay": wd}, {"params": [...], "weight_decay": 0.0}]``,
        then the same pair per scaled prefix (with its ``lr``).
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(module).__name__} has no trainable parameter")
    scales = module.lr_scales() if hasattr(module, "lr_scales") else {}
    if scales and lr is None:
        raise ValueError("param_groups needs lr when the task has lr_scales")
    buckets: dict[float, list] = {}
    for name, p in named:
        factor = next((f for prefix, f in scales.items() if name.startswith(prefix)), 1.0)
        buckets.setdefault(float(factor), []).append(p)
    groups = []
    for factor, params in sorted(buckets.items(), key=lambda kv: kv[0] != 1.0):
        extra = {} if factor == 1.0 else {"lr": lr * factor}
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, **extra},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, **extra}]
    return groups


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a device; ``local_rank`` picks the GPU
    under torchrun."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device={spec!r} but CUDA is not available")
        if local_rank is not None:
            return torch.device("cuda", local_rank)
    return torch.device(spec)


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None`` = fp32, no autocast)."""
    if spec == "auto":
        spec = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


def _scalars(out: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The loggable scalars of a task output, detached, float32, 0-dim; checks ``loss``."""
    if not isinstance(out, Mapping) or not isinstance(out.get("loss"), torch.Tensor):
        got = f"a dict with keys {list(out)}" if isinstance(out, Mapping) else type(out).__name__
        raise TypeError(f"a task must return a dict with a scalar 'loss' tensor, got {got}")
    if out["loss"].numel() != 1:
        raise ValueError(f"the task's 'loss' must be a scalar, "
                         f"got shape {tuple(out['loss'].shape)}")
    found = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = value.detach().float().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = torch.tensor(float(value), device=device)
    return found


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        steps: optimiser steps taken in total (over every resume).
        epochs: epochs of progress (``steps / steps_per_epoch``).
        wall_s: training seconds over every resume.
        last: the last logged values (train scalars and ``val_`` ones).
        out_dir: the run folder.
    """

    steps: int
    epochs: float
    wall_s: float
    last: dict[str, float] = field(default_factory=dict)
    out_dir: Path = Path(".")


class Trainer:
    """Optimises a task with AdamW, a warm-up schedule, accumulation, AMP and DDP.

    Args:
        task: ``task(batch) -> {"loss": tensor, ...}`` (see the module docstring).
        train_data: a map-style dataset; ``set_epoch(epoch)`` is called on it each epoch
            when it has that method.
        cfg: the training settings.
        out_dir: the run folder (resumed when it holds ``checkpoints/last``).
        collate_fn: builds a batch from samples (default: torch's ``default_collate``).
        val_data: optional dataset validated under ``no_grad`` in eval mode.
        val_collate_fn: the validation set's collate function (default: ``collate_fn``).
    """

    def __init__(self, task: nn.Module, train_data: Dataset, cfg: TrainConfig,
                 out_dir: str | Path, collate_fn: Callable | None = None,
                 val_data: Dataset | None = None, val_collate_fn: Callable | None = None) -> None:
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            if data is not None and not hasattr(data, "__len__"):
                raise TypeError(f"{name} must be a map-style dataset with __len__, "
                                f"got {type(data).__name__}")
        if len(train_data) == 0:
            raise ValueError("train_data is empty")
        self.task, self.cfg = task, cfg
        self.train_data, self.val_data = train_data, val_data
        self.collate_fn = collate_fn
        self.val_collate_fn = val_collate_fn or collate_fn
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"

    # ----------------------------------------------------------------- set-up

    def fit(self) -> TrainResult:
        """Train to ``max_steps`` / ``epochs``, resuming from ``out_dir`` when it can.

        Returns:
            A :class:`TrainResult`.

        Raises:
            ValueError: a dataset too small for one (accumulated) batch, a bad device.
            TypeError: a task output without a scalar ``loss``.
        """
        threads = torch.get_num_threads()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ["LOCAL_RANK"]) if world > 1 else None
        self.device = resolve_device(self.cfg.device, local_rank)
        created = False
        if world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            created = True
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.main = self.rank == 0
        self.csv = self.tb = self.bar = None
        try:
            if self.cfg.num_threads:
                torch.set_num_threads(self.cfg.num_threads)
            return self._fit()
        finally:
            torch.set_num_threads(threads)
            for thing in (self.tb, self.bar):
                if thing is not None:
                    thing.close()
            if created:
                dist.destroy_process_group()

    def _plan(self) -> tuple[ResumableSampler, int, int]:
        cfg = self.cfg
        sampler = ResumableSampler(len(self.train_data), cfg.batch_size, seed=cfg.seed,
                                   rank=self.rank, world_size=self.world)
        batches = sampler.batches_per_epoch
        if batches == 0:
            raise ValueError(f"train_data has {len(self.train_data)} samples: fewer than one "
                             f"batch of batch_size={cfg.batch_size} on each of "
                             f"{self.world} process(es)")
        if batches < cfg.grad_accum:
            raise ValueError(f"train_data gives {batches} batches of {cfg.batch_size} per "
                             f"process and epoch, fewer than grad_accum={cfg.grad_accum}")
        if self.val_data is not None and len(self.val_data) < self.world:
            raise ValueError(f"val_data has {len(self.val_data)} samples, fewer than the "
                             f"{self.world} processes")
        steps_per_epoch = batches // cfg.grad_accum
        return sampler, steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch

    def _fit(self) -> TrainResult:
        cfg, device = self.cfg, self.device
        sampler, steps_per_epoch, total = self._plan()
        self.amp = resolve_precision(cfg.precision, device)
        torch.manual_seed(cfg.seed + self.rank)
        task = self.task.to(device)
        model = task
        if self.distributed:
            model = nn.parallel.DistributedDataParallel(
                task, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        optimizer = torch.optim.AdamW(param_groups(task, cfg.weight_decay, cfg.lr), lr=cfg.lr,
                                      betas=tuple(cfg.betas))
        scheduler = build_scheduler(optimizer, total,
                                    resolve_warmup(total, cfg.warmup_steps, cfg.warmup_ratio),
                                    cfg.schedule)
        scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        state = self._load(optimizer, scheduler, scaler)
        step, epoch, batch_pos = state["step"], state["epoch"], state["batch"]
        sums = {k: torch.tensor(v, device=device) for k, v in state["sums"].items()}
        count, last = state["count"], dict(state["last"])
        wall0, t0 = state["wall_s"], time.perf_counter()
        rate_t0, rate_batches = t0, 0

        if self.main:
            save_config(cfg, self.out_dir, "train_config.yaml")
            record_environment(self.out_dir, step)
            self.csv = CSVLog(self.out_dir / "log.csv", keep_until=step)
            self.tb = TensorBoardLog(self.out_dir / "tb", purge_step=step + 1 if step else None,
                                     enabled=cfg.tensorboard)
            if step:
                log.info("resuming %s at step %d (epoch %d, batch %d)",
                         self.out_dir, step, epoch, batch_pos)
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, initial=step, desc="train", unit="step",
                        disable=not self.main, dynamic_ncols=True)

        accum, per_epoch = cfg.grad_accum, steps_per_epoch * cfg.grad_accum
        while step < total:
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(epoch)
            sampler.set_epoch(epoch, skip_batches=batch_pos)
            loader = self._loader(self.train_data, sampler, epoch, device)
            model.train()
            micro = 0
            # islice: the micro-batches short of a whole step at the epoch end are not loaded
            for batch in itertools.islice(loader, per_epoch - batch_pos):
                sync = not self.distributed or micro == accum - 1
                with contextlib.nullcontext() if sync else model.no_sync():
                    with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                        raw = model(move_to_device(batch, device, True))
                        out = _scalars(raw, device)
                    scaler.scale(raw["loss"] / accum).backward()
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value
                count, micro, batch_pos = count + 1, micro + 1, batch_pos + 1
                rate_batches += 1
                if micro < accum:
                    continue
                micro = 0
                lr = self._optimizer_step(optimizer, scheduler, scaler)
                step += 1
                self.bar.update()
                epoch_done = batch_pos >= per_epoch
                progress = round(step / steps_per_epoch, 4)
                now = time.perf_counter()
                if step % cfg.log_every == 0 or step == total:
                    values = self._reduce_mean(sums, count)
                    last.update(values)
                    rate = rate_batches * cfg.batch_size * self.world / max(now - rate_t0, 1e-9)
                    self._write({"step": step, "epoch": progress, "lr": lr,
                                 "samples_per_s": round(rate, 2),
                                 "wall_s": round(wall0 + now - t0, 3), **values})
                    self.bar.set_postfix(loss=f"{values['loss']:.4f}")
                    if self.main and not math.isfinite(values["loss"]):
                        log.warning("step %d: the loss is %s", step, values["loss"])
                    sums, count, rate_t0, rate_batches = {}, 0, now, 0
                if self.val_data is not None and (
                        (cfg.eval_every and step % cfg.eval_every == 0)
                        or (not cfg.eval_every and epoch_done) or step == total):
                    values = self._validate(device)
                    last.update(values)
                    self._write({"step": step, "epoch": progress,
                                 "wall_s": round(wall0 + time.perf_counter() - t0, 3), **values})
                if step % cfg.save_every == 0 or epoch_done or step == total:
                    pos = (epoch + 1, 0) if epoch_done else (epoch, batch_pos)
                    self._save(step, *pos, optimizer, scheduler, scaler, sums, count, last,
                               wall0 + time.perf_counter() - t0)
                if step >= total:
                    break
            if step < total or batch_pos >= per_epoch:
                epoch, batch_pos = epoch + 1, 0

        if self.main:
            if (self.out_dir / "log.csv").is_file():
                plot_loss_curves(self.out_dir / "log.csv", self.out_dir / "loss_curves.png")
            if hasattr(self.task, "save_pretrained"):
                self.task.save_pretrained(self.out_dir / "final")
        if self.distributed:
            dist.barrier()
        return TrainResult(steps=step, epochs=round(step / steps_per_epoch, 4),
                           wall_s=wall0 + time.perf_counter() - t0, last=last,
                           out_dir=self.out_dir)

    # --------------------------------------------------------------- helpers

    def _loader(self, data: Dataset, sampler: ResumableSampler, epoch: int,
                device: torch.device, collate_fn: Callable | None = None) -> DataLoader:
        # A private generator: creating the iterator must not draw from the global RNG,
        # or a run resumed mid-epoch would see other dropout than an uninterrupted one.
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return DataLoader(data, batch_size=self.cfg.batch_size, sampler=sampler,
                          collate_fn=collate_fn or self.collate_fn, num_workers=self.cfg.num_workers,
                          pin_memory=device.type == "cuda", generator=gen)

    def _optimizer_step(self, optimizer, scheduler, scaler) -> float:
        """Clip, step, advance the schedule, clear the gradients; returns the lr used."""
        lr = optimizer.param_groups[0]["lr"]
        if self.cfg.max_grad_norm > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        with warnings.catch_warnings():
            # fp16: the scaler skips steps with inf gradients; the lr still follows the step count
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return lr

    def _reduce_mean(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Window means of the logged scalars, averaged over the processes."""
        if not sums:
            return {}
        values = torch.stack(list(sums.values())) / max(count, 1)
        if self.distributed:
            dist.all_reduce(values)
            values /= self.world
        return dict(zip(sums, values.tolist()))

    def _write(self, row: dict) -> None:
        if self.main:
            self.csv.append(row)
            self.tb.add(row, row["step"])

    @torch.no_grad()
    def _validate(self, device: torch.device) -> dict[str, float]:
        """Sample-weighted means of the task's scalars over ``val_data``, ``val_``-prefixed."""
        task, cfg = self.task, self.cfg  # unwrapped: ranks may see unequal batch counts
        was_training = task.training
        task.eval()
        sampler = ResumableSampler(len(self.val_data), cfg.batch_size, shuffle=False,
                                   rank=self.rank, world_size=self.world, drop_last=False,
                                   pad=False)
        sums: dict[str, torch.Tensor] = {}
        n = 0
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # keeps the training RNG stream intact
            torch.manual_seed(cfg.seed + self.rank)
            loader = self._loader(self.val_data, sampler, 0, device, self.val_collate_fn)
            for batch, size in zip(loader, sampler.batch_sizes()):
                with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                    out = _scalars(task(move_to_device(batch, device, True)), device)
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value * size
                n += size
        task.train(was_training)
        values = torch.stack([*sums.values(), torch.tensor(float(n), device=device)])
        if self.distributed:
            dist.all_reduce(values)
        return {f"val_{k}": v / values[-1].item() for k, v in zip(sums, values.tolist())}

    # ----------------------------------------------------------- checkpoints

    def _checkpoint(self) -> Path | None:
        """``checkpoints/last``, or ``last.old`` when a crash hit between the two renames."""
        for name in ("last", "last.old"):
            if (self.ckpt_dir / name / "trainer_state.pt").is_file():
                return self.ckpt_dir / name
        return None

    def _save(self, step: int, epoch: int, batch: int, optimizer, scheduler, scaler,
              sums: dict[str, torch.Tensor], count: int, last: dict, wall_s: float) -> None:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        rngs = [rng]
        if self.distributed:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        # Window sums (exact in one process; across processes their mean, which the next
        # log row averages linearly), so a resumed run logs what an uninterrupted one does.
        window = self._reduce_mean(sums, 1)
        if self.main:
            from safetensors.torch import save_model

            tmp = self.ckpt_dir / "last.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model(self.task, str(tmp / "task.safetensors"))
            torch.save({"step": step, "epoch": epoch, "batch": batch, "world_size": self.world,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rngs, "sums": window,
                        "count": count, "last": last, "wall_s": wall_s},
                       tmp / "trainer_state.pt")
            current, old = self.ckpt_dir / "last", self.ckpt_dir / "last.old"
            if current.exists():  # a directory cannot be replaced in one rename
                shutil.rmtree(old, ignore_errors=True)
                current.rename(old)
            tmp.rename(current)
            shutil.rmtree(old, ignore_errors=True)
            if (self.out_dir / "log.csv").is_file():
                plot_loss_curves(self.out_dir / "log.csv", self.out_dir / "loss_curves.png")
        if self.distributed:
            dist.barrier()

    def _load(self, optimizer, scheduler, scaler) -> dict:
        """Restore the task, optimiser, schedule, scaler and RNG; the loop position."""
        fresh = {"step": 0, "epoch": 0, "batch": 0, "sums": {}, "count": 0, "last": {},
                 "wall_s": 0.0}
        folder = self._checkpoint()
        if folder is None:
            return fresh
        from safetensors.torch import load_model

        load_model(self.task, str(folder / "task.safetensors"), device=str(self.device))
        state = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if state["world_size"] != self.world:
            log.warning("%s was written by %d process(es), resumed by %d: the data order and "
                        "RNG will not match an uninterrupted run", folder, state["world_size"],
                        self.world)
            if state["batch"]:  # per-process batch counts mean nothing at another world size
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
        rng = rngs[self.rank] if self.rank < len(rngs) else rngs[0]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available() and \
                len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return {k: state[k] for k in fresh}
