"""Training the SAT decoder on a catalog's own image-title pairs.

The backbone is frozen, so the grid features of every train/val image are computed
once (float16, cached on disk under ``out/features/``) and only the decoder trains,
with teacher forcing and AdamW. Every epoch is validated (loss and greedy BLEU-4);
the run folder holds, HF-style:

    model.safetensors   best decoder so far (by ``select_by``)
    config.yaml         the resolved :class:`SATTrainConfig`
    vocab.json          the vocabulary built on the train titles
    last.pt             model + optimizer + RNG after the last finished epoch (resume)
    log.csv, loss_curve.png, features/{train,val}.pt
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch.nn.utils import clip_grad_norm_

from kaleido.config import config_to_dict, save_config
from kaleido.data import Catalog, LoadReport, split_catalog
from kaleido.patches.backbone import Backbone, create_backbone

from .captioner import save_decoder
from .metrics import bleu4
from .model import PAD_ID, SATConfig, SATDecoder, encode, sat_losses
from .vocab import Vocabulary

log = logging.getLogger(__name__)

SELECT_BY = ("bleu4", "loss")

#: Settings that may change when a run is resumed (anything else is warned about).
_RESUMABLE = ("epochs", "patience", "resume", "device", "feature_batch_size", "num_threads")


@dataclass
class SATTrainConfig:
    """Training the captioner (the root of the ``sat`` presets).

    Attributes:
        model: the captioner's architecture (backbone, grid size, decoder sizes).
        min_freq: train-title words seen fewer times map to ``<unk>``.
        all_views: train on every image of a product (each with the product's title);
            otherwise on its first image only. Validation always uses the first image.
        lr: AdamW learning rate (paper-style default 4e-4).
        weight_decay: AdamW weight decay.
        batch_size: captions per optimisation step.
        epochs: last epoch to train (raise it and rerun to continue a finished run).
        grad_clip: max gradient norm (0 = no clipping).
        patience: stop after this many epochs without a better ``select_by`` (0 = never).
        select_by: ``bleu4`` (val BLEU-4 of greedy captions) or ``loss`` (val caption loss)
            chooses the saved model; falls back to train loss when there is no val split.
        seed: seeds the decoder's init, the shuffling and dropout.
        feature_batch_size: images per backbone pass while caching features.
        device: ``cpu`` or ``cuda``.
        num_threads: torch CPU threads of the decoder training (0 = torch's default; the
            feature pass always uses the default). The step-by-step LSTM is many small ops:
            on a busy 2-core machine 1 thread trained 6x faster than 2.
        resume: continue from ``out/last.pt`` when it exists.
    """

    model: SATConfig = field(default_factory=SATConfig)
    min_freq: int = 2
    all_views: bool = False
    lr: float = 4e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 30
    grad_clip: float = 5.0
    patience: int = 5
    select_by: str = "loss"
    seed: int = 0
    feature_batch_size: int = 32
    device: str = "cpu"
    num_threads: int = 1
    resume: bool = True

    def __post_init__(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        for name in ("batch_size", "epochs", "min_freq", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SATTrainConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class CaptionData:
    """Cached grid features and encoded titles of one split.

    Attributes:
        keys: ``(product_id, view)`` per row.
        features: (N, L, C) float16 grid features.
        captions: (N, S) padded ids ``<start> .. <end> <pad>..``.
        titles: the raw titles (BLEU references).
    """

    keys: list[tuple[str, int]]
    features: torch.Tensor
    captions: torch.Tensor
    titles: list[str]

    def __len__(self) -> int:
        return len(self.keys)


# -------------------------------------------------------------------------- features


def _box_for(boxes, product_id: str, view: int):
    if boxes is None:
        return None
    return boxes.get((product_id, view), boxes.get(product_id))


def _feature_key(catalog: Catalog, backbone: Backbone, cfg: SATTrainConfig, all_views: bool,
                 boxes) -> str:
    """Fingerprint of everything the cached features depend on."""
    items = [(p.id, [str(ref) for ref in p.images]) for p in catalog]
    used = sorted((str(k), list(map(float, v))) for k, v in (boxes or {}).items())
    backbone_cfg = {k: v for k, v in config_to_dict(cfg.model.backbone).items() if k != "runtime"}  # same features
    blob = json.dumps([backbone_cfg, cfg.model.encoder_input_size,
                       backbone.weights_source, all_views, items, used], default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def compute_features(catalog: Catalog, backbone: Backbone, cfg: SATTrainConfig, *,
                     all_views: bool, boxes=None, cache: Path | None = None,
                     desc: str = "features") -> tuple[list[tuple[str, int]], torch.Tensor]:
    """Grid features of a catalog's images, float16, optionally cached in a file.

    Unreadable images are reported (product id and reason) and skipped.

    Args:
        catalog: the products.
        backbone: the frozen encoder.
        cfg: gives the encoder input size and the batch size.
        all_views: every image of each product, or only the first.
        boxes: optional ``{product_id or (product_id, view): (x0, y0, x1, y1)}`` crops.
        cache: a ``.pt`` file reused when its fingerprint matches.

    Returns:
        ``(keys, features)``: ``(product_id, view)`` per row and (N, L, C) float16.
    """
    from tqdm.auto import tqdm

    key = _feature_key(catalog, backbone, cfg, all_views, boxes)
    if cache is not None and cache.is_file():
        blob = torch.load(cache, weights_only=True)
        if blob.get("key") == key:
            log.info("reusing cached features %s", cache)
            return [(pid, int(v)) for pid, v in blob["keys"]], blob["features"]
    report = LoadReport(source=catalog.report.source)
    keys, chunks, images, crops = [], [], [], []
    total = sum(len(p.images) if all_views else min(1, len(p.images)) for p in catalog)
    size, bs = cfg.model.encoder_input_size, cfg.feature_batch_size

    def flush():
        if images:
            chunks.append(encode(backbone, images, size, crops).half())
            images.clear()
            crops.clear()

    with tqdm(total=total, desc=desc, unit="img", disable=total < 2 * bs) as bar:
        for product, view, image in catalog.iter_images(report=report, all_views=all_views):
            keys.append((product.id, view))
            images.append(image)
            crops.append(_box_for(boxes, product.id, view))
            if len(images) == bs:
                flush()
            bar.update()
        flush()
    if report.skipped:
        log.warning("%s\n(%s: images skipped)", report.summary(), desc)
    if not keys:
        raise ValueError(f"{catalog.report.source}: no readable image in the {desc} products")
    features = torch.cat(chunks)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial")
        torch.save({"key": key, "keys": [[pid, v] for pid, v in keys], "features": features},
                   partial)
        partial.replace(cache)
    return keys, features


def build_data(catalog: Catalog, keys, features, vocab: Vocabulary, max_len: int) -> CaptionData:
    """Pair cached features with their encoded, padded titles."""
    titles = [catalog[pid].title for pid, _ in keys]
    encoded = [vocab.encode(t, max_len=max_len) for t in titles]
    captions = torch.full((len(encoded), max(map(len, encoded))), vocab.pad_id, dtype=torch.long)
    for i, ids in enumerate(encoded):
        captions[i, :len(ids)] = torch.tensor(ids)
    return CaptionData(list(keys), features, captions, titles)


# --------------------------------------------------------------------------- epochs


def _batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _to_batch(data: CaptionData, idx: torch.Tensor, device):
    captions = data.captions[idx]
    lengths = (captions != PAD_ID).sum(dim=1)
    captions = captions[:, :int(lengths.max())]
    return data.features[idx].to(device).float(), captions.to(device), lengths.to(device)


def train_one_epoch(decoder: SATDecoder, data: CaptionData, optimizer, cfg: SATTrainConfig,
                    epoch: int) -> dict[str, float]:
    """One teacher-forced pass; returns the mean losses per caption."""
    decoder.train()
    device = next(decoder.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    sums, n = {}, 0
    for idx in _batches(len(data), cfg.batch_size, gen):
        features, captions, lengths = _to_batch(data, idx, device)
        out = decoder(features, captions, lengths)
        losses = sat_losses(out, captions[:, 1:out.logits.shape[1] + 1], cfg.model.alpha_c)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        optimizer.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
        n += len(idx)
    return {f"train_{k}": v / n for k, v in sums.items()}


@torch.no_grad()
def validate(decoder: SATDecoder, data: CaptionData, vocab: Vocabulary,
             cfg: SATTrainConfig) -> dict[str, float]:
    """Val losses (teacher forced) and BLEU-4 of greedy captions against the titles."""
    decoder.eval()
    device = next(decoder.parameters()).device
    sums, n, hyps = {}, 0, {}
    for idx in _batches(len(data), cfg.batch_size):
        features, captions, lengths = _to_batch(data, idx, device)
        out = decoder(features, captions, lengths)
        for k, v in sat_losses(out, captions[:, 1:out.logits.shape[1] + 1],
                               cfg.model.alpha_c).items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
        n += len(idx)
        for i, gen in zip(idx.tolist(), decoder.greedy(features)):
            hyps[str(i)] = " ".join(vocab.decode(gen.token_ids))
    refs = {str(i): [t] for i, t in enumerate(data.titles)}
    return {**{f"val_{k}": v / n for k, v in sums.items()}, "val_bleu4": bleu4(refs, hyps)}


# -------------------------------------------------------------------------- outputs


def _monitor(cfg: SATTrainConfig, has_val: bool) -> str:
    if not has_val:
        return "train_caption_loss"
    return "val_bleu4" if cfg.select_by == "bleu4" else "val_caption_loss"


def _is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_bleu4" else value < best


def _write_log(history: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _plot_curves(history: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg)

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_bleu = fig.subplots(1, 2)
    for key, label in (("train_caption_loss", "train caption"), ("val_caption_loss", "val caption"),
                       ("train_attention_loss", "train attention")):
        if any(key in h for h in history):
            ax_loss.plot(epochs, [h.get(key, math.nan) for h in history], "o-", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="losses")
    ax_loss.legend()
    if any("val_bleu4" in h for h in history):
        ax_bleu.plot(epochs, [h.get("val_bleu4", math.nan) for h in history], "o-", color="C3")
    ax_bleu.set(xlabel="epoch", ylabel="BLEU-4", title="validation BLEU-4 (greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _save_checkpoint(path: Path, decoder, optimizer, state: dict, cfg: SATTrainConfig) -> None:
    ckpt = {"model": decoder.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "config": config_to_dict(cfg), **state}
    partial = path.with_suffix(".partial")
    torch.save(ckpt, partial)
    partial.replace(path)  # a crash mid-write never leaves a broken last.pt


def _resume(path: Path, decoder, optimizer, cfg: SATTrainConfig) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    decoder.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    before, now = ckpt.get("config", {}), config_to_dict(cfg)
    changed = {k: (before[k], v) for k, v in now.items()
               if k in before and before[k] != v and k not in _RESUMABLE}
    if changed:
        log.warning("resuming %s with changed settings (old, new): %s", path, changed)
    log.info("resuming from %s after epoch %d", path, ckpt["epoch"])
    return {k: ckpt[k] for k in ("epoch", "best", "best_epoch", "bad_epochs", "history")}


# ----------------------------------------------------------------------------- main


@dataclass
class SATTrainResult:
    """What :func:`train_sat` did.

    Attributes:
        out_dir: the run folder.
        best_epoch: epoch of the saved model.
        monitor: the quantity that chose it; best: its value.
        history: one dict of losses / BLEU-4 per epoch (also in ``log.csv``).
        stopped_early: patience ran out before ``epochs``.
    """

    out_dir: Path
    best_epoch: int | None
    monitor: str
    best: float | None
    history: list[dict]
    stopped_early: bool = False


def train_sat(catalog: Catalog, split: Mapping[str, str], cfg: SATTrainConfig,
              out_dir: str | Path, boxes: Mapping | None = None,
              backbone: Backbone | None = None) -> SATTrainResult:
    """Train the SAT decoder on the catalog's train split, validating on its val split.

    Args:
        catalog: the products (titles are the captions).
        split: ``{product_id: "train" | "val" | "test"}`` (see ``kaleido.data.read_split``).
        cfg: the training config.
        out_dir: run folder; an existing ``last.pt`` there is resumed (``cfg.resume``).
        boxes: optional ``{product_id or (product_id, view): (x0, y0, x1, y1)}`` crops
            (the saliency boxes) applied before encoding.
        backbone: a created backbone to reuse (else created from ``cfg.model.backbone``).

    Returns:
        A :class:`SATTrainResult`; the best model is in ``out_dir/model.safetensors``.
    """
    threads = torch.get_num_threads()
    try:
        return _train_sat(catalog, split, cfg, Path(out_dir), boxes, backbone)
    finally:
        torch.set_num_threads(threads)


def _train_sat(catalog, split, cfg: SATTrainConfig, out: Path, boxes, backbone) -> SATTrainResult:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    torch.manual_seed(cfg.seed)
    train_cat = split_catalog(catalog, dict(split), "train")
    val_cat = split_catalog(catalog, dict(split), "val")
    if len(train_cat) == 0:
        raise ValueError(f"{catalog.report.source}: the train split is empty")

    vocab = Vocabulary.build((p.title for p in train_cat), min_freq=cfg.min_freq)
    vocab_path = out / "vocab.json"
    if vocab_path.is_file() and Vocabulary.load(vocab_path).itos != vocab.itos:
        raise ValueError(f"{vocab_path} was built from other titles or another min_freq; "
                         f"use a new run folder")
    vocab.save(vocab_path)
    log.info("vocabulary: %d words (min_freq %d) from %d train titles",
             len(vocab), cfg.min_freq, len(train_cat))

    backbone = backbone or create_backbone(cfg.model.backbone)
    backbone.to(cfg.device)
    keys, feats = compute_features(train_cat, backbone, cfg, all_views=cfg.all_views,
                                   boxes=boxes, cache=out / "features" / "train.pt",
                                   desc="train features")
    train = build_data(catalog, keys, feats, vocab, cfg.model.max_len)
    val = None
    if len(val_cat):
        keys, feats = compute_features(val_cat, backbone, cfg, all_views=False, boxes=boxes,
                                       cache=out / "features" / "val.pt", desc="val features")
        val = build_data(catalog, keys, feats, vocab, cfg.model.max_len)
    else:
        log.warning("no val products: the model is chosen by train loss, BLEU-4 not measured")

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # the backbone pass above keeps torch's default
    decoder = SATDecoder(cfg.model, len(vocab), backbone.feature_dim).to(cfg.device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    monitor = _monitor(cfg, val is not None)
    state = {"epoch": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "history": []}
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        state = _resume(last, decoder, optimizer, cfg)
    stopped = False
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            stopped = True
            break
        start = time.perf_counter()
        row = {"epoch": epoch, **train_one_epoch(decoder, train, optimizer, cfg, epoch)}
        if val is not None:
            row.update(validate(decoder, val, vocab, cfg))
        row["seconds"] = round(time.perf_counter() - start, 2)
        state["history"].append(row)
        state["epoch"] = epoch
        if _is_better(row[monitor], state["best"], monitor):
            state.update(best=row[monitor], best_epoch=epoch, bad_epochs=0)
            save_decoder(decoder, out / "model.safetensors", epoch=epoch)
        else:
            state["bad_epochs"] += 1
        _save_checkpoint(last, decoder, optimizer, state, cfg)
        _write_log(state["history"], out / "log.csv")
        _plot_curves(state["history"], out / "loss_curve.png")
        log.info("epoch %d: %s", epoch, ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds")))
    if cfg.patience and state["bad_epochs"] >= cfg.patience and state["epoch"] < cfg.epochs:
        stopped = True
    if stopped:
        log.info("stopped early: no better %s for %d epochs", monitor, cfg.patience)
    return SATTrainResult(out, state["best_epoch"], monitor, state["best"], state["history"],
                          stopped)
