"""A tuned image backbone: the linear reference's recipe with the backbone's last stages trained.

Every dual encoder on frozen EfficientNet-Lite0 features ends near the linear reference
(KB-101 SumR about 440-450); training the backbone's last stages with the reference's maps
reaches SumR 469.4 (two stages), 475.6 (three) and 479.6 (four, the default:
``from_stage=3``) on the test split (docs/MEASUREMENTS.md, sessions 21-23). This module makes
that a model: the tuned backbone is saved as weights that
:class:`~kaleido.patches.backbone.BackboneConfig` loads, so the whole-image features of the
catalog (``image_features``), of a query photo (``whole_image_extractor``) and of the
``whole`` dual encoder all come from it.

Recipe (``TuneConfig``): the whole image at 224 px through the frozen trunk (stem and
``blocks[:from_stage]``), whose activations are cached once per split in resumable chunks
(training products also mirrored: the second view); the tail (``blocks[from_stage:]``, the
1x1 head conv and its BatchNorm, whose running statistics stay ImageNet's) plus the
reference's :class:`~kaleido.baselines.linear_probe.LinearDualEncoder` over the frozen
mean-pooled MiniLM title embedding, symmetric InfoNCE with same-title products never
negatives, AdamW with a cosine schedule, the tail at its own learning rate. A killed run
resumes from ``OUT/checkpoint.pt`` (each epoch).

Outputs of :func:`run_tune` (``kaleido baseline tune-backbone``):
``OUT/backbone/model.safetensors`` (the whole tuned backbone, float16),
``OUT/model/`` (the linear maps, as the linear reference's ``model/``),
``OUT/features/<split>/`` (whole-image features by the saved backbone: what ``kaleido patches
union --whole-image`` attaches), ``OUT/log.csv`` (loss and val SumR per epoch) and
``OUT/result.json`` (val and test scored from those features: the served path).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kaleido.baselines.features import (GlobalFeatureConfig, cached_titles, chunked_features, image_features,
                                        product_records, weights_id)
from kaleido.baselines.linear_probe import LinearDualEncoder, ProbeEvalConfig, retrieval_from_scores, similarity
from kaleido.contrastive import info_nce, title_codes

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone/model.safetensors"


@dataclass
class TuneConfig:
    """How the backbone tail and the linear maps train (defaults: the best measured row)."""

    from_stage: int = 3          # first trained block (EfficientNet-Lite0 has 7; 7 = the head conv only)
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1.0e-3           # the linear maps and the temperature
    tail_lr: float = 3.0e-4      # the backbone tail (0: frozen, the linear reference with a cosine schedule)
    weight_decay: float = 1.0e-2
    dim: int = 256
    dropout: float = 0.2
    init_temperature: float = 0.07
    mirror: bool = True          # mirrored training images as a second view
    seed: int = 0
    threads: int = 0             # torch threads (0 = leave as is)


@dataclass
class TuneRunConfig:
    """Root config of ``kaleido baseline tune-backbone``."""

    features: GlobalFeatureConfig = field(default_factory=GlobalFeatureConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: ProbeEvalConfig = field(default_factory=ProbeEvalConfig)


def split_backbone(backbone, stage: int) -> tuple[nn.Module, nn.Module]:
    """(frozen trunk: normalised image -> input of ``blocks[stage]``, tail: that -> pooled (B, C))
    of an EfficientNet-style timm backbone. Shares the backbone's modules (training the tail
    trains the backbone)."""
    m = backbone.model
    if not hasattr(m, "blocks") or not hasattr(m, "conv_head"):
        raise ValueError(f"backbone {backbone.name}: tuning splits EfficientNet-style models (blocks + conv_head)")
    if not 0 <= stage <= len(m.blocks):
        raise ValueError(f"from_stage must lie in [0, {len(m.blocks)}], not {stage}")
    trunk = nn.Sequential(m.conv_stem, m.bn1, *m.blocks[:stage])
    tail = nn.Sequential(*m.blocks[stage:], m.conv_head, m.bn2, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, tail


class TunedDual(LinearDualEncoder):
    """The linear reference (``LinearDualEncoder``) with a trainable backbone tail under its image map."""

    def __init__(self, tail: nn.Module, image_dim: int, text_dim: int, cfg: TuneConfig = TuneConfig()):
        super().__init__(image_dim, text_dim, cfg.dim, cfg.dropout, cfg.init_temperature)
        self.tail = tail

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.tail.modules():  # ImageNet BatchNorm statistics stay
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def pooled(self, acts: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) trunk activations -> (N, image_dim) pooled backbone features."""
        return self.tail(acts.float().contiguous(memory_format=torch.channels_last))

    def embed_acts(self, acts: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) trunk activations -> (N, dim) unit vectors."""
        return self.embed_image(self.pooled(acts))

    def linear_part(self) -> LinearDualEncoder:
        """The maps alone, over pooled features (what is saved as ``OUT/model``)."""
        out = LinearDualEncoder(**self.dims, init_temperature=1.0)
        out.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("tail.")})
        return out.eval()


def trunk_activations(catalog, products, trunk: nn.Module, backbone, folder: Path, views: int,
                      cfg: GlobalFeatureConfig) -> tuple[list[str], np.ndarray]:
    """(ids, (N, views, C, H, W) float16) trunk outputs, cached in resumable chunks; view 1 is
    the mirrored image."""
    def compute(images: torch.Tensor) -> np.ndarray:
        x = backbone.normalize(images)
        with torch.inference_mode():
            outs = [trunk(v.contiguous(memory_format=torch.channels_last))
                    for v in ([x, x.flip(-1)] if views == 2 else [x])]
        return torch.stack(outs, 1).half().numpy()

    settings = {"trunk": type(backbone.model).__name__, "blocks": len(trunk) - 2, "views": views,
                "weights": weights_id(cfg.weights)}
    return chunked_features(catalog, products, folder, compute, settings, cfg.image_size, cfg.batch_size,
                            cfg.chunk, desc=f"trunk activations ({folder.name})")


def _split_data(products, ids, image: np.ndarray, titles_file: Path) -> dict:
    return {"image": image, "text": cached_titles(products, ids, titles_file).astype(np.float32),
            **product_records(products, ids)}


def _act_scores(model: TunedDual, acts: np.ndarray, text: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, N) similarities of trunk activations (through the tail, in batches) and title vectors."""
    model.eval()
    with torch.no_grad():
        img = torch.cat([model.embed_acts(torch.from_numpy(acts[i:i + batch])) for i in range(0, len(acts), batch)])
        return (img @ model.embed_text(torch.from_numpy(text)).t()).numpy()


def train_tuned(model: TunedDual, train: dict, val: dict, cfg: TuneConfig, out: Path, protocol: ProbeEvalConfig,
                progress: bool = True) -> dict:
    """Train ``model`` on cached trunk activations (``train["image"]``: (N, views, C, H, W)),
    scoring val each epoch; resumes from ``out/checkpoint.pt``. Returns ``{"seconds", "steps"}``."""
    tail = model.tail
    tail.requires_grad_(cfg.tail_lr > 0)
    heads = [p for n, p in model.named_parameters() if not n.startswith("tail.")]
    groups = [{"params": heads, "lr": cfg.lr}]
    if cfg.tail_lr > 0:
        groups.append({"params": list(tail.parameters()), "lr": cfg.tail_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    n, views = len(train["image"]), train["image"].shape[1]
    steps_per_epoch = max(n // cfg.batch_size, 1)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ckpt, start_epoch, seconds = out / "checkpoint.pt", 0, 0.0
    recipe = json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("epochs", "threads")},
                        sort_keys=True)
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state.get("recipe", recipe) != recipe:
            raise ValueError(f"{ckpt} was trained with another recipe ({state['recipe']}); resume it with the same "
                             "tune.* settings (only tune.epochs may grow: the cosine schedule is stretched to it), "
                             "or choose a new --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, seconds = int(state["epoch"]), float(state.get("seconds", 0.0))
        log.info("resumed after epoch %d", start_epoch)
    groups_t = torch.from_numpy(title_codes(train["titles"]))
    text = torch.from_numpy(train["text"])
    logf = out / "log.csv"
    if start_epoch == 0:
        with logf.open("w", newline="") as f:
            csv.writer(f).writerow(["epoch", "loss", "val_sumr", "seconds"])
    for epoch in range(start_epoch, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order, flips = torch.randperm(n, generator=g), torch.randint(0, views, (n,), generator=g)
        model.train()
        t0, losses = time.perf_counter(), []
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                      disable=not progress):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].numpy()
            acts = torch.from_numpy(train["image"][idx, flips[idx].numpy()])
            loss = info_nce(model.embed_acts(acts), model.embed_text(text[idx]), model.logit_scale, groups_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        scores = _act_scores(model, val["image"][:, 0], val["text"])
        sumr = retrieval_from_scores(scores, val["subcategory"], val["category"], val["titles"],
                                     dataclasses.replace(protocol, full_catalog=False))["SumR"]
        elapsed = time.perf_counter() - t0
        seconds += elapsed
        log.info("epoch %d: loss %.3f, val SumR %.1f (%.0f s)", epoch + 1, np.mean(losses), sumr, elapsed)
        with logf.open("a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, f"{np.mean(losses):.4f}", f"{sumr:.2f}", f"{elapsed:.1f}"])
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "seconds": seconds, "recipe": recipe}, tmp)
        tmp.replace(ckpt)
    model.eval()
    return {"seconds": seconds, "steps": total}


def run_tune(catalog, split_file: str | Path, out: str | Path, cfg: TuneRunConfig = TuneRunConfig(),
             cache: str | Path | None = None, progress: bool = True) -> dict:
    """Tune the backbone on the train split, save it, extract every split's whole-image
    features with the saved weights and score val and test from them.

    Args:
        catalog: the catalog.
        split_file: ``kaleido data split`` output (its train / val / test).
        out: the run folder (see the module docstring); a killed run resumes.
        cfg: features (the backbone and its starting weights), recipe, protocol.
        cache: where the trunk activations and title vectors go (default ``out``; share it
            between runs of the same ``from_stage``).
        progress: progress bars.

    Returns:
        ``{"val": Table-2 dict, "test": ..., "train": {...}, "backbone": path}`` (also ``OUT/result.json``).
    """
    from kaleido.baselines.features import load_feature_backbone
    from kaleido.data.split import split_products
    from kaleido.evaluation.tables import to_jsonable
    from kaleido.patches.backbone import save_backbone_weights

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache or out)
    cache.mkdir(parents=True, exist_ok=True)
    t = cfg.tune
    if t.threads:
        torch.set_num_threads(t.threads)
    backbone = load_feature_backbone(cfg.features)
    trunk, tail = split_backbone(backbone, t.from_stage)
    products = {s: split_products(catalog, split_file, s) for s in ("train", "val", "test")}
    acts = {}
    for s in ("train", "val"):
        views = 2 if (s == "train" and t.mirror) else 1
        ids, a = trunk_activations(catalog, products[s], trunk, backbone,
                                   cache / "activations" / f"stage{t.from_stage}-{s}", views, cfg.features)
        acts[s] = _split_data(products[s], ids, a, cache / f"titles-{s}.npz")
    if not len(acts["train"]["ids"]):
        raise ValueError(f"no training product of {split_file} has a readable image")

    torch.manual_seed(t.seed)
    model = TunedDual(tail, int(backbone.feature_dim), acts["train"]["text"].shape[1], t)
    with torch.no_grad():  # standardise with the untuned tail's statistics on the training products
        pooled = torch.cat([model.pooled(torch.from_numpy(acts["train"]["image"][i:i + 256, 0]))
                            for i in range(0, len(acts["train"]["image"]), 256)])
        model.image_mean.copy_(pooled.mean(0))
        model.image_std.copy_(pooled.std(0).clamp_min(1e-6))
        text = torch.from_numpy(acts["train"]["text"])
        model.text_mean.copy_(text.mean(0))
        model.text_std.copy_(text.std(0).clamp_min(1e-6))
    info = train_tuned(model, acts["train"], acts["val"], t, out, cfg.eval, progress)
    del acts

    weights = save_backbone_weights(backbone, out / BACKBONE_FILE)  # float16: what serving loads
    model.linear_part().save_pretrained(out / "model")
    served = dataclasses.replace(cfg.features, weights=str(weights.resolve()))
    result = {"train": {**info, "products": 0}, "backbone": str(weights), "config": dataclasses.asdict(cfg)}
    maps = LinearDualEncoder.from_pretrained(out / "model")
    for s in ("train", "val", "test"):
        ids, image = image_features(catalog, products[s], out / "features" / s, served)
        if s == "train":
            result["train"]["products"] = len(ids)
            continue
        data = _split_data(products[s], ids, image, cache / f"titles-{s}.npz")
        np.savez(out / "features" / f"{s}-titles.npz", ids=np.array(ids, dtype=str), text=data["text"])
        result[s] = retrieval_from_scores(similarity(maps, data["image"], data["text"]), data["subcategory"],
                                          data["category"], data["titles"], cfg.eval)
        log.info("%s: KB-101 SumR %.1f", s, result[s]["SumR"])
    (out / "result.json").write_text(json.dumps(to_jsonable(result), indent=2))
    return result
