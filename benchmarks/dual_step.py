"""Dual encoder training step: frozen text tower (pooled states cached) vs fine-tuned text tower.

The release dual encoder (preset ``whole``) keeps MiniLM frozen, so its pooled title and
attribute states are computed once and a step only trains the image tower and the two
projections. With ``model.text.freeze=false`` every step also runs MiniLM forward and backward
on both text views (2 x batch texts). This times one full step (forward, backward, AdamW)
of each, at the preset's batch size, on real titles and attribute texts of
``data/sample/products.csv`` (cycled to the batch size) and seeded synthetic patch and
whole-image features of the cache's shape (55 x 1280 and 1280). The two take turns
(``--rounds``), so a change in the machine's load hits both; the ratio is the figure to read.

    python benchmarks/dual_step.py [--batch 128] [--rounds 3] [--steps 2] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kaleido.config import load_config
from kaleido.data import load_catalog
from kaleido.dual import DualRunConfig
from kaleido.dual.data import DualCollator
from kaleido.dual.run import build_dual_task
from kaleido.training.loop import param_groups

FEATURE_DIM = 1280


def make_task(freeze: bool, batch: int, seed: int = 0):
    overrides = [f"model.text.freeze={str(freeze).lower()}", f"train.batch_size={batch}",
                 f"model.image.whole_image_dim={FEATURE_DIM}"]
    if not freeze:
        overrides.append("model.text.lr_scale=0.1")  # LiT-style: the pre-trained body at a tenth of the rate
    cfg = load_config(DualRunConfig, "whole", overrides, component="dual")
    torch.manual_seed(seed)
    task = build_dual_task(cfg)
    task.train()
    opt = torch.optim.AdamW(param_groups(task, cfg.train.weight_decay, cfg.train.lr), lr=cfg.train.lr)
    return cfg, task, opt


def make_batch(task, products, batch: int, frozen: bool, seed: int = 0) -> dict:
    """One collated batch: items as ``DualDataset`` yields them (two image views)."""
    g = np.random.default_rng(seed)
    proc = task.processor
    chosen = [products[i % len(products)] for i in range(batch)]
    titles = proc.encode([p.title for p in chosen])
    attrs = proc.encode([proc.attribute_text(p) for p in chosen])
    n = proc.num_patches
    pos = g.random((n, 5), dtype=np.float32)  # the pooled tower does not read positions
    items = []
    for i in range(batch):
        it = {"patch_positions": pos, "title_ids": titles[i], "attributes_ids": attrs[i],
              "title_group": i, "attributes_group": i,
              "whole_image": g.standard_normal(FEATURE_DIM).astype(np.float32)}
        for v in "ab":
            it[f"patch_features_{v}"] = g.random((n, FEATURE_DIM), dtype=np.float32)
            it[f"patch_mask_{v}"] = np.ones(n, dtype=bool)
        items.append(it)
    if frozen:  # what DualDataset.cache_text_states does once before training
        t, a = task.text_states(titles).numpy(), task.text_states(attrs).numpy()
        for i, it in enumerate(items):
            it["title_states"], it["attributes_states"] = t[i], a[i]
    return DualCollator(proc, task.cfg)(items)


def step(task, opt, batch) -> float:
    opt.zero_grad(set_to_none=True)
    loss = task(batch)["loss"]
    loss.backward()
    opt.step()
    return float(loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", default="data/sample")
    ap.add_argument("--batch", type=int, default=128, help="products per step (the whole preset's 128)")
    ap.add_argument("--rounds", type=int, default=3, help="turns of each system")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per turn")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    products = list(load_catalog(args.catalog))
    systems = {}
    for name, frozen in (("frozen text tower (cached states)", True), ("fine-tuned text tower", False)):
        cfg, task, opt = make_task(frozen, args.batch)
        batch = make_batch(task, products, args.batch, frozen)
        step(task, opt, batch)  # warm-up (allocations, first-call costs)
        trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
        systems[name] = {"task": task, "opt": opt, "batch": batch, "times": [], "trainable": trainable}
    for _ in range(args.rounds):
        for s in systems.values():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(s["task"], s["opt"], s["batch"])
            s["times"].append((time.perf_counter() - t0) / args.steps)
    print(f"batch {args.batch} products, 2 image views x 2 text views, torch threads {torch.get_num_threads()}, "
          f"{args.rounds} turns x {args.steps} steps")
    print(f"{'system':38s} {'trainable params':>16s} {'s/step (median)':>16s} {'min':>7s} {'max':>7s}")
    out = {"batch": args.batch, "threads": torch.get_num_threads(), "systems": {}}
    for name, s in systems.items():
        t = np.asarray(s["times"])
        print(f"{name:38s} {s['trainable']:16,d} {np.median(t):16.3f} {t.min():7.3f} {t.max():7.3f}")
        out["systems"][name] = {"trainable": s["trainable"], "s_per_step": t.tolist(), "median": float(np.median(t))}
    names = list(systems)
    ratio = np.median(systems[names[1]]["times"]) / np.median(systems[names[0]]["times"])
    print(f"fine-tuned / frozen: {ratio:.1f}x the time per step")
    out["ratio"] = float(ratio)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
