"""``train_dual(...)``: the dual encoder on a catalog's cached patches, on the shared training loop."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from kaleido.config import save_config
from kaleido.data import Catalog
from kaleido.data.split import split_products
from kaleido.dual.config import DualRunConfig
from kaleido.dual.data import DualCollator, DualDataset
from kaleido.dual.modeling import create_dual_encoder
from kaleido.dual.processor import DualProcessor
from kaleido.dual.task import DualTask
from kaleido.patches.cache import FeatureCache
from kaleido.training import TrainResult, Trainer, is_main_process

log = logging.getLogger(__name__)

FINAL = "final"


def fit_to_cache(cfg: DualRunConfig, cache: FeatureCache) -> DualRunConfig:
    """``cfg`` with the image tower's feature size and patch levels set from the cache."""
    image = cfg.model.image
    dim, grids = int(cache.feature_dim), [int(g) for g in cache.meta["grids"]]
    if image.feature_dim != dim or list(image.grids) != grids:
        log.info("image tower: %d-d features on grids %s (from the cache %s)", dim, grids, cache.root)
        image = dataclasses.replace(image, feature_dim=dim, grids=grids)
    if image.whole_image:
        if not cache.whole_image_dim:
            raise ValueError(f"model.image.whole_image=true but {cache.root} carries no whole-image features; "
                             "make one with `kaleido patches union CACHE --whole-image FEATURES --out UNION`")
        image = dataclasses.replace(image, whole_image_dim=cache.whole_image_dim)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image=image))


def build_dual_task(cfg: DualRunConfig, pretrained: bool = True) -> DualTask:
    """The dual encoder (text tower from ``cfg.model.text.init`` when ``pretrained``), its
    processor and the loss."""
    processor = DualProcessor.default(cfg.data.max_text_len, cfg.data.attribute_template, cfg.model.image.grids,
                                      whole_image=cfg.model.image.whole_image)
    return DualTask(create_dual_encoder(cfg.model, pretrained=pretrained), processor, cfg.loss)


def train_dual(cfg: DualRunConfig, catalog: Catalog, cache: str | Path, out: str | Path,
               split_file: str | Path | None = None) -> TrainResult:
    """Train the dual encoder with multi-view InfoNCE.

    Args:
        cfg: the run config (``kaleido/configs/dual/*.yaml`` + overrides).
        catalog: the products (titles, categories, attributes).
        cache: the ``kaleido patches extract`` folder.
        out: the run folder; a run there is resumed. Holds ``config.yaml``, ``log.csv`` and
            ``final/`` (the dual encoder and its processor).
        split_file: ``split.csv`` (or its folder) when ``cfg.data.split`` is set.

    Returns:
        The training loop's result (``last`` holds the last train and ``val_`` values, e.g.
        ``val_loss``, ``val_i2t_r1``).
    """
    out = Path(out)
    features = FeatureCache(cache)
    if not features.complete:
        log.warning("feature cache %s is incomplete; products without features are left out", cache)
    cfg = fit_to_cache(cfg, features)
    torch.manual_seed(cfg.train.seed)  # the image tower's (and a random text tower's) initial weights
    task = build_dual_task(cfg)
    processor = task.processor
    train = DualDataset(split_products(catalog, split_file, cfg.data.split, cfg.data.limit), features, processor,
                        cfg.augment, cfg.loss.image_views, cfg.train.seed)
    val = None
    if cfg.data.val_split:
        held = [p for p in split_products(catalog, split_file, cfg.data.val_split, cfg.data.val_limit)
                if p.id in features]
        if len(held) < 2:
            log.warning("validation split %r has %d product(s) with features; validation skipped",
                        cfg.data.val_split, len(held))
        else:
            clean = dataclasses.replace(cfg.augment, enabled=False)
            val = DualDataset(held, features, processor, clean, cfg.loss.image_views, cfg.train.seed + 1)
    if cfg.model.text.freeze:  # a frozen body's pooled states never change: computed once, not per step
        for data in (train, val):
            if data is not None:
                data.cache_text_states(task)
        log.info("text tower frozen: pooled states of %d texts computed once", 2 * (len(train) + len(val or [])))
    log.info("dual encoder: %s image tower, training on %d products%s", cfg.model.image.tower, len(train),
             f", validating on {len(val)}" if val else "")
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out, "config.yaml")
    collate = DualCollator(processor, cfg.loss)
    return Trainer(task, train, cfg.train, out, collate_fn=collate, val_data=val).fit()
