"""The dual encoder's loss and training under torchrun (gloo), for tests/test_dual.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_dual_gather.py OUT_DIR

Each rank writes ``OUT_DIR/rank<r>.pt`` (its multi-view InfoNCE over its half of a fixed batch,
negatives gathered from both processes, and the gradients of its rows) and, after 2 steps of the
tiny dual task in the shared training loop under DDP, ``OUT_DIR/train_rank<r>.pt`` (its weights).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORLD, N, DIM = 2, 8, 4


def inputs():
    """Two image views, two text views (N, DIM) of unit rows, and each text view's groups; products
    1 and 5, and 0 and 7, share a title (twins on different processes)."""
    gen = torch.Generator().manual_seed(0)
    views = [torch.nn.functional.normalize(torch.randn(N, DIM, generator=gen), dim=1) for _ in range(4)]
    titles = torch.tensor([0, 1, 2, 3, 4, 1, 6, 0])
    tags = torch.stack([titles, torch.tensor([10, 11, 12, 10, 13, 14, 12, 15])], 1)
    return views[:2], views[2:], [titles, tags]


def loss_and_grads(images, texts, groups, gather: bool, rank: int = 0, world: int = 1) -> dict:
    """The loss over this process's rows (all rows in one process) and the gradients of those rows."""
    from kaleido.dual import DualLossConfig, MultiViewInfoNCE

    b = N // world
    rows = slice(rank * b, (rank + 1) * b)
    leaves = [x[rows].clone().requires_grad_() for x in [*images, *texts]]
    loss = MultiViewInfoNCE(DualLossConfig(gather=gather, intra_weight=0.5))(
        leaves[:2], leaves[2:], torch.tensor(2.0), [g[rows] for g in groups], ["title", "attributes"])
    loss["contrastive_loss"].backward()
    return {"loss": float(loss["contrastive_loss"].detach()), "grads": [x.grad for x in leaves]}


class SyntheticCache:
    """What DualDataset reads from a FeatureCache: random 32-d features of 55 patches per product."""

    root, meta, feature_dim = "synthetic", {"grids": [1, 2, 3, 4, 5]}, 32

    def __contains__(self, product_id) -> bool:
        return True

    def __getitem__(self, product_id):
        rng = np.random.default_rng(int(product_id))
        return SimpleNamespace(features=rng.normal(size=(55, 32)).astype(np.float32),
                               positions=rng.random((55, 5)).astype(np.float32))


def train(out: Path) -> None:
    from kaleido.config import load_config
    from kaleido.data import Product
    from kaleido.dual import DualCollator, DualDataset, DualRunConfig, build_dual_task
    from kaleido.training import TrainConfig, Trainer

    cfg = load_config(DualRunConfig, "tiny", component="dual")
    torch.manual_seed(0)
    task = build_dual_task(cfg)
    colours = ["Red", "Blue", "Black", "White"]
    products = [Product(id=str(i), title=f"{colours[i % 4]} shirt {i % 6}", images=(), category="Topwear",
                        subcategory="Shirts", attributes={"baseColour": colours[i % 4]}) for i in range(16)]
    data = DualDataset(products, SyntheticCache(), task.processor, cfg.augment, 2, seed=0)
    tc = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, log_every=1, save_every=2, device="cpu", num_threads=1,
                     tensorboard=False)
    Trainer(task, data, tc, out / "run", collate_fn=DualCollator(task.processor, cfg.loss)).fit()
    rank = int(os.environ.get("RANK", "0"))
    torch.save({k: v.detach().clone() for k, v in task.state_dict().items()}, out / f"train_rank{rank}.pt")


def main(out_dir: str) -> None:
    import torch.distributed as dist

    out = Path(out_dir)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save(loss_and_grads(*inputs(), gather=True, rank=rank, world=world), out / f"rank{rank}.pt")
    train(out)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1])
