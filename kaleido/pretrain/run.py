"""``pretrain(...)``: build the data, the model and the task from a config, then train."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch

from kaleido.alignment.store import load_alignments
from kaleido.config import save_config
from kaleido.data import Catalog
from kaleido.data.split import split_products
from kaleido.model import KaleidoProcessor, create_model_for_patches, is_kaleido_checkpoint
from kaleido.patches.cache import FeatureCache
from kaleido.pretrain.config import PretrainConfig
from kaleido.pretrain.augment import PixelRandAugment
from kaleido.pretrain.data import PretrainDataset, collate_pretrain
from kaleido.pretrain.task import PretrainTask
from kaleido.training import Trainer, is_main_process

log = logging.getLogger(__name__)

FINAL = "final"


def build_task(cfg: PretrainConfig, feature_dim: int, grids=(1, 2, 3, 4, 5)) -> PretrainTask:
    """The model (weights from ``cfg.init``) and the heads that are on."""
    pretrained = False if cfg.init in ("", "none") else cfg.init
    task = PretrainTask(create_model_for_patches(cfg.model, pretrained, feature_dim, grids), cfg.tasks)
    if pretrained and is_kaleido_checkpoint(pretrained):
        log.info("multi-stage: encoder and heads %s from %s", task.load_heads(pretrained), pretrained)
    return task


def pretrain(cfg: PretrainConfig, catalog: Catalog, cache: str | Path, out: str | Path,
             split_file: str | Path | None = None):
    """Pre-train Kaleido-BERT on a catalog's cached patches and alignments.

    Args:
        cfg: the run config (``kaleido/configs/pretrain/*.yaml`` + overrides).
        catalog: the products (titles, categories).
        cache: the ``kaleido patches extract`` folder (its ``alignments.jsonl`` is used
            unless ``cfg.data.alignments`` names another file).
        out: the run folder; an existing run there is resumed.
        split_file: ``split.csv`` (or its folder) when ``cfg.data.split`` is set.

    Returns:
        The training loop's result; the model is in ``OUT/final`` (Kaleido-BERT folder
        with its processor and the pre-training heads).
    """
    out = Path(out)
    features = FeatureCache(cache)
    if not features.complete:
        raise ValueError(f"feature cache {cache} is incomplete; finish `kaleido patches extract` first")
    alignments = None
    if cfg.masking.strategy == "agm":
        path = Path(cfg.data.alignments) if cfg.data.alignments else Path(cache) / "alignments.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"alignment-guided masking needs {path}: run `kaleido align build` "
                                    "first, or use masking.strategy=random")
        alignments = load_alignments(path)
    processor = KaleidoProcessor.default(cfg.data.max_text_len, cfg.tokenizer, features.meta["grids"])
    data = partial(PretrainDataset, cache=features, alignments=alignments, processor=processor,
                   masking=cfg.masking, tasks=cfg.tasks, seed=cfg.train.seed)
    augment = PixelRandAugment.for_cache(features.meta, cfg.augment) if cfg.augment.randaugment else None
    train = data(split_products(catalog, split_file, cfg.data.split, cfg.data.limit), augment=augment)
    val = data(split_products(catalog, split_file, cfg.data.val_split, cfg.data.val_limit)) \
        if cfg.data.val_split else None
    log.info("pre-training on %d products (%.1f%% with aligned pairs)%s", len(train),
             100 * train.aligned_share, f", validating on {len(val)}" if val else "")
    torch.manual_seed(cfg.train.seed)  # the heads' (and a random model's) initial weights
    task = build_task(cfg, features.feature_dim, features.meta["grids"])
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out)
    collate = partial(collate_pretrain, pad_id=processor.tokenizer.pad_token_id)
    result = Trainer(task, train, cfg.train, out, collate_fn=collate, val_data=val).fit()
    if is_main_process():
        processor.save_pretrained(out / FINAL)
    return result
