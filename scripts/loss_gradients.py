"""Print the gradient norm each pre-training loss sends into the encoder, averaged over a few
batches of a real feature cache (the measurement behind the loss weights of the presets).

    python scripts/loss_gradients.py --catalog runs/subset/catalog --cache runs/subset/cache \\
        --split-file runs/subset/catalog/split --config default --batches 4 [tasks.itc=1 ...]
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from kaleido.alignment.store import load_alignments
    from kaleido.config import load_config
    from kaleido.data import load_catalog
    from kaleido.data.split import split_products
    from kaleido.model import KaleidoProcessor
    from kaleido.patches.cache import FeatureCache
    from kaleido.pretrain.config import PretrainConfig
    from kaleido.pretrain.data import PretrainDataset, collate_pretrain
    from kaleido.pretrain.diagnostics import loss_gradient_norms
    from kaleido.pretrain.run import build_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--split-file", type=Path, required=True)
    parser.add_argument("--config", default="default")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(PretrainConfig, args.config, args.overrides, component="pretrain")
    features = FeatureCache(args.cache)
    align = args.cache / "alignments.jsonl"
    alignments = load_alignments(align) if cfg.masking.strategy == "agm" and align.is_file() else None
    processor = KaleidoProcessor.default(cfg.data.max_text_len, cfg.tokenizer, features.meta["grids"])
    products = split_products(load_catalog(args.catalog), args.split_file, cfg.data.split)
    data = PretrainDataset(products, features, alignments, processor, cfg.masking, cfg.tasks, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg, features.feature_dim, features.meta["grids"]).train()
    collate = partial(collate_pretrain, pad_id=processor.tokenizer.pad_token_id)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(args.batches):
        idx = rng.choice(len(data), cfg.train.batch_size, replace=False)
        rows.append(loss_gradient_norms(task, collate([data[int(i)] for i in idx])))
    print(f"{args.batches} batches of {cfg.train.batch_size}, init {cfg.init}, weights {task.loss_weights}")
    print("| loss | value | grad norm on the encoder | weighted |\n|---|---:|---:|---:|")
    for name in rows[0]:
        mean = {k: float(np.mean([r[name][k] for r in rows])) for k in rows[0][name]}
        print(f"| {name} | {mean['loss']:.3f} | {mean['grad_norm']:.3f} | {mean['weighted_grad_norm']:.3f} |")


if __name__ == "__main__":
    main()
