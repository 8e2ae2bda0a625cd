"""``finetune(kind, ...)``: one downstream task on the shared training loop."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kaleido.config import save_config
from kaleido.data import Catalog
from kaleido.data.split import read_split, split_catalog, split_products
from kaleido.finetune.caption import CaptionCollator, CaptionTask
from kaleido.finetune.category import (CategoryCollator, CategoryDataset, CategoryTask, label_names,
                                       resolve_targets)
from kaleido.finetune.config import KINDS, FinetuneConfig
from kaleido.finetune.multitask import MultitaskCollator, MultitaskDataset, MultitaskTask
from kaleido.finetune.pairs import PairInputs
from kaleido.finetune.retrieval import PairCollator, RetrievalDataset, RetrievalTask
from kaleido.model import KaleidoProcessor, create_model_for_patches, is_kaleido_checkpoint
from kaleido.model.processor import PROCESSOR_NAME
from kaleido.patches.cache import FeatureCache
from kaleido.training import Trainer, is_main_process

log = logging.getLogger(__name__)

FINAL = "final"


def load_processor(init: str | Path, max_text_len: int, grids) -> KaleidoProcessor:
    """The processor saved with a checkpoint, else the offline default."""
    if init and (Path(init) / PROCESSOR_NAME).is_file():
        return KaleidoProcessor.from_pretrained(init)
    return KaleidoProcessor.default(max_text_len, grids=grids)


def start_model(cfg: FinetuneConfig, init: str, feature_dim: int, grids=(1, 2, 3, 4, 5)):
    """The encoder to fine-tune: a Kaleido-BERT folder, or ``minilm`` / ``none`` (no pre-training)."""
    saved = bool(init) and is_kaleido_checkpoint(init)
    if init not in ("minilm", "none", "") and not saved:
        raise FileNotFoundError(f"--from {init}: not a Kaleido-BERT folder (a pre-training run's "
                                "final/), nor minilm / none")
    pretrained = init if saved else init == "minilm"
    return create_model_for_patches(cfg.model, pretrained, feature_dim, grids)


def build_task(kind: str, cfg: FinetuneConfig, model, train: PairInputs):
    """The task module of one fine-tuning kind (category labels come from ``train``); ``multitask``
    is the tasks of ``cfg.multitask.tasks`` around the one ``model``."""
    if kind == "multitask":
        return MultitaskTask(model, cfg.multitask, {k: build_task(k, cfg, model, train) for k in cfg.multitask.tasks})
    if kind == "retrieval":
        return RetrievalTask(model, cfg.retrieval)
    if kind == "category":
        targets = resolve_targets(train.products, cfg.category.targets)
        labels = {t: label_names(train.products, t) for t in targets}
        for t, names in labels.items():
            if len(names) < 2:
                raise ValueError(f"the training products have {len(names)} {t} label(s); need at least 2")
        return CategoryTask(model, cfg.category, labels)
    if kind == "caption":
        return CaptionTask(model, cfg.caption)
    raise ValueError(f"unknown fine-tuning task {kind!r}; one of {KINDS}")


def build_data(task, pairs: PairInputs, seed: int):
    """(dataset, collate function) of ``task`` over ``pairs``."""
    if isinstance(task, MultitaskTask):
        built = {kind: build_data(sub, pairs, seed) for kind, sub in task.tasks.items()}
        return (MultitaskDataset({k: d for k, (d, _) in built.items()}),
                MultitaskCollator({k: c for k, (_, c) in built.items()}))
    if isinstance(task, RetrievalTask):
        return RetrievalDataset(pairs, task.cfg, seed), PairCollator(pairs)
    if isinstance(task, CategoryTask):
        return CategoryDataset(pairs, task.labels), CategoryCollator(pairs, task.cfg.inputs)
    return list(range(len(pairs))), CaptionCollator(pairs, task.cfg)


def validation_pairs(cfg: FinetuneConfig, catalog: Catalog, split_file, features: FeatureCache,
                     processor: KaleidoProcessor) -> PairInputs | None:
    """The validation products with cached features, or None (validation skipped, with a
    warning) when there is no validation split or it has fewer than 2 such products."""
    name = cfg.data.val_split
    if not name:
        return None
    if split_file is None:
        raise ValueError(f"validation split {name!r} asked for but no --split-file given "
                         "(data.val_split='' turns validation off)")
    products = list(split_catalog(catalog, read_split(split_file), name))
    products = products[:cfg.data.val_limit] if cfg.data.val_limit else products
    cached = [p for p in products if p.id in features]
    if len(cached) < 2:
        log.warning("validation split %r has %d product(s), %d of them in the feature cache %s; "
                    "validation skipped (extract the split's features with `kaleido patches extract "
                    "--split-file %s --split %s`, or set data.val_split='')", name, len(products),
                    len(cached), features.root, split_file, name)
        return None
    return PairInputs(cached, features, processor)


def finetune(kind: str, cfg: FinetuneConfig, catalog: Catalog, cache: str | Path, init: str | Path,
             out: str | Path, split_file: str | Path | None = None):
    """Fine-tune Kaleido-BERT for retrieval, category or captioning, or all of them at once.

    Args:
        kind: ``retrieval``, ``category``, ``caption``, or ``multitask`` (one encoder for the
            tasks of ``cfg.multitask.tasks``: the serving checkpoint).
        cfg: the run config.
        catalog: the products.
        cache: their patch features (``kaleido patches extract``).
        init: a pre-training run's ``final/`` folder (its heads seed the task heads where
            they fit), or ``minilm`` / ``none`` for a model without pre-training.
        out: the run folder (resumed when it holds a checkpoint); the model lands in ``OUT/final``.
        split_file: ``split.csv`` (or its folder).

    Returns:
        The training loop's result.
    """
    out, init = Path(out), str(init)
    features = FeatureCache(cache)
    processor = load_processor(init, cfg.data.max_text_len, features.meta["grids"])
    train = PairInputs(split_products(catalog, split_file, cfg.data.split, cfg.data.limit), features, processor)
    torch.manual_seed(cfg.train.seed)
    model = start_model(cfg, init, features.feature_dim, features.meta["grids"])
    task = build_task(kind, cfg, model, train)
    data, collate = build_data(task, train, cfg.train.seed)
    if hasattr(task, "init_from_pretraining") and is_kaleido_checkpoint(init):
        log.info("%s head from the pre-trained heads: %s", kind, task.init_from_pretraining(init))
    val = val_collate = None
    val_pairs = validation_pairs(cfg, catalog, split_file, features, processor)
    if val_pairs is not None:
        val, val_collate = build_data(task, val_pairs, cfg.train.seed + 1)
    if is_main_process():
        save_config(cfg, out, "config.yaml")
    result = Trainer(task, data, cfg.train, out, collate_fn=collate, val_data=val,
                     val_collate_fn=val_collate).fit()
    if is_main_process():
        processor.save_pretrained(out / FINAL)
    return result
