"""A toy regression task for the training-loop tests; run under torchrun it trains with DDP.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_toy.py OUT_DIR

Each rank writes its final parameters to ``OUT_DIR/params_rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]


class SimulatedKill(RuntimeError):
    """Raised by :class:`ToyTask` to stop a run as a kill would."""


class ToyData(Dataset):
    """``y = x @ w + noise``: one fixed ``w``, ``x`` drawn from ``seed`` (train / val sets);
    the noise is drawn per (seed, epoch, index), as a data step does."""

    def __init__(self, n: int = 64, dim: int = 8, seed: int = 0, noise: float = 0.05) -> None:
        weights = torch.randn(dim, 1, generator=torch.Generator().manual_seed(1234))  # one task
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
        self.y = self.x @ weights
        self.seed, self.noise, self.epoch = seed, noise, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1000 + self.epoch) * 100_000 + i)
        return {"x": self.x[i], "y": self.y[i] + self.noise * torch.randn(1, generator=gen),
                "index": i}


class ToyTask(nn.Module):
    """A small MLP with dropout; returns the loss, a loss component and a metric."""

    def __init__(self, dim: int = 8, hidden: int = 32, dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.LayerNorm(hidden), nn.Linear(hidden, 1))
        self.saved_to: Path | None = None
        self.crash_at: int | None = None  # raise on this many-th training forward (a kill)
        self.calls = 0

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.training:
            self.calls += 1
            if self.crash_at is not None and self.calls >= self.crash_at:
                raise SimulatedKill(f"killed at training forward {self.calls}")
        pred = self.net(batch["x"])
        mse = F.mse_loss(pred, batch["y"])
        return {"loss": mse, "mse_loss": mse, "mae": (pred - batch["y"]).abs().mean()}

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(self, str(path / "model.safetensors"))
        self.saved_to = path


def main(out_dir: str) -> None:
    from kaleido.training import TrainConfig, Trainer

    cfg = TrainConfig(max_steps=4, batch_size=4, grad_accum=2, lr=1e-2, log_every=1, save_every=3,
                      device="cpu", num_threads=1, tensorboard=False)
    task = ToyTask()
    Trainer(task, ToyData(n=32), cfg, out_dir, val_data=ToyData(n=9, seed=1)).fit()
    rank = int(os.environ.get("RANK", "0"))
    torch.save({k: v.detach().clone() for k, v in task.state_dict().items()},
               Path(out_dir) / f"params_rank{rank}.pt")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1])
