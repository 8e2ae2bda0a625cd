"""Fine-tune U2-Net-p on a catalog's own foreground masks, and evaluate any detector on them.

Data: an images folder and a masks folder paired by file stem (``x.jpg`` <->
``x.png``). Training follows U2-Net (Qin et al. 2020): binary cross-entropy on the
fused map and on each of the six side maps (deep supervision), here with AdamW
at a small learning rate from the pre-trained weights (the BN-folded model has
no normalisation layers, see ``saliency.u2net``).

A run folder holds::

    model.safetensors   best epoch by ``FinetuneConfig.monitor`` (load with
                        SaliencyConfig(weights=...) / saliency.detector.load_finetuned_u2netp)
    last.pt             model + optimizer state after the last finished epoch (resume)
    config.yaml         the resolved FinetuneConfig
    metrics.json        per-epoch losses and validation SOD metrics, the best epoch
    loss_curve.png      train / val loss and the monitored metric per epoch

Training images are decoded once and kept in memory at ``image_size`` (uint8,
about 0.3 MB each at 320 px), which suits the hundreds to few thousands of hand
masks this is meant for.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kaleido.config import config_to_dict, save_config
from kaleido.data.images import ImageLoadError, decode_image
from saliency.detector import SaliencyDetector, load_finetuned_u2netp
from saliency.metrics import SODMetrics
from saliency.u2net import INPUT_SIZE, U2NETP, U2NetOutput, preprocess

logger = logging.getLogger(__name__)

__all__ = [
    "FinetuneConfig",
    "MaskDataset",
    "MaskPair",
    "deep_supervision_loss",
    "evaluate_detector",
    "find_pairs",
    "finetune",
    "read_mask",
    "split_pairs",
    "train_one_epoch",
    "validate",
    "warmup_lr",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Metrics where lower is better; every other SODMetrics key is higher-is-better.
_LOWER_IS_BETTER = {"mae", "val_loss", "train_loss"}
_MONITORS = ("mae", "max_f", "mean_f", "adp_f", "s_measure", "max_e", "mean_e", "adp_e", "val_loss")


@dataclass
class FinetuneConfig:
    """How U2-Net-p is fine-tuned on user masks.

    Attributes:
        images: folder of training images (``x.jpg``, ``x.png``, ...).
        masks: folder of masks with the same stems (``x.png``); foreground is
            grey level > 127 (0/255 masks, or anti-aliased edges).
        out: run folder (created); an existing ``last.pt`` there is resumed.
        weights: starting weights: a fine-tuned ``model.safetensors`` (or its
            folder); None starts from the converted pre-trained U2-Net-p.
        epochs: total number of epochs, counting those of a resumed run.
        lr: AdamW learning rate; small, the weights are already good.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: the learning rate rises linearly to ``lr`` over this many
            steps. The normalisation-free model is fragile at the start: without
            warm-up, Adam's first full-size step multiplied the loss by ~3.5 in our
            runs (and by 25 at lr 1e-3).
        grad_clip: clip the gradient's global norm to this; 0 turns clipping off.
        batch_size: images per optimisation step.
        val_fraction: share of the pairs held out for validation (seeded, by
            stem); at least one pair when > 0 and there are two or more pairs.
        seed: split, shuffling and flips; a resumed run repeats them exactly.
        image_size: square training side; the detector reuses it (stored in the
            safetensors metadata). 320 is what the pre-trained weights saw.
        hflip: random horizontal flips (garments are left-right symmetric enough).
        monitor: validation metric choosing ``model.safetensors``: a SODMetrics key
            (``mae``, ``max_f``, ``s_measure``, ``max_e``, ...) or ``val_loss``;
            ``mae`` and ``val_loss`` are lower-is-better. Without a validation set
            the lowest training loss is kept.
        resume: continue from ``out/last.pt`` when it exists.
        device: torch device.
    """

    images: str = ""
    masks: str = ""
    out: str = ""
    weights: str | None = None
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    batch_size: int = 8
    val_fraction: float = 0.1
    seed: int = 0
    image_size: int = INPUT_SIZE
    hflip: bool = True
    monitor: str = "max_f"
    resume: bool = True
    device: str = "cpu"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MaskPair:
    """One image and its mask, paired by file stem."""

    stem: str
    image: Path
    mask: Path


def _files_by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise ValueError(
                f"two {what} share the stem {path.stem!r}: {files[path.stem]} and {path}")
        files[path.stem] = path
    if not files:
        raise ValueError(f"no {what} ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _examples(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def find_pairs(images_dir: str | Path, masks_dir: str | Path) -> list[MaskPair]:
    """Pair ``images_dir/x.jpg`` with ``masks_dir/x.png`` by file stem.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks.

    Returns:
        The pairs, sorted by stem.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder holds no image, two files share a stem, or some
            image has no mask or some mask no image (the message names them).
    """
    images = _files_by_stem(Path(images_dir), "images")
    masks = _files_by_stem(Path(masks_dir), "masks")
    no_mask = sorted(images[s].name for s in images.keys() - masks.keys())
    no_image = sorted(masks[s].name for s in masks.keys() - images.keys())
    if no_mask or no_image:
        problems = []
        if no_mask:
            problems.append(f"{len(no_mask)} image(s) in {images_dir} without a mask in "
                            f"{masks_dir}: {_examples(no_mask)}")
        if no_image:
            problems.append(f"{len(no_image)} mask(s) in {masks_dir} without an image in "
                            f"{images_dir}: {_examples(no_image)}")
        raise ValueError("images and masks do not pair up by file stem; " + "; ".join(problems))
    return [MaskPair(s, images[s], masks[s]) for s in sorted(images)]


def split_pairs(
    pairs: list[MaskPair], val_fraction: float, seed: int
) -> tuple[list[MaskPair], list[MaskPair]]:
    """Seeded train / validation split of the pairs (by stem, so reruns agree)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    n_val = round(val_fraction * len(pairs))
    if val_fraction > 0 and len(pairs) >= 2:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = sorted((pairs[i] for i in order[:n_val]), key=lambda p: p.stem)
    train = sorted((pairs[i] for i in order[n_val:]), key=lambda p: p.stem)
    return train, val


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as a boolean (H, W) array: grey level > 127 is foreground.

    Raises:
        ImageLoadError: missing, unreadable or truncated file.
    """
    return np.asarray(decode_image(path).convert("L")) > 127


def _load_pair(pair: MaskPair) -> tuple[Image.Image, np.ndarray]:
    image = decode_image(pair.image)
    mask = read_mask(pair.mask)
    if mask.shape != (image.height, image.width):
        raise ImageLoadError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                             f"{pair.image.name} is {image.width}x{image.height}")
    return image, mask


class MaskDataset(Dataset):
    """Image / mask pairs resized to ``size`` and kept in memory.

    Items are ``(x, y)``: ``x`` (3, S, S) float32 normalised exactly as
    ``saliency.u2net.preprocess`` does for the detector, ``y`` (1, S, S) float32
    in [0, 1] (bilinear-resized mask, soft at the edges).
    """

    def __init__(self, pairs: list[MaskPair], size: int):
        """Decode every pair; unreadable or mismatched ones are logged and skipped.

        Attributes set: ``pairs`` (the kept ones), ``skipped`` (``(pair, reason)``).
        """
        self.size = size
        self.pairs: list[MaskPair] = []
        self.skipped: list[tuple[MaskPair, str]] = []
        self._images: list[np.ndarray] = []  # (S, S, 3) uint8
        self._masks: list[np.ndarray] = []  # (S, S) uint8
        for pair in pairs:
            try:
                image, mask = _load_pair(pair)
            except ImageLoadError as err:
                logger.warning("skipping %s: %s", pair.stem, err)
                self.skipped.append((pair, str(err)))
                continue
            square = (size, size)
            self._images.append(np.asarray(image.resize(square, Image.Resampling.LANCZOS)))
            mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
            self._masks.append(np.asarray(mask_img.resize(square, Image.Resampling.BILINEAR)))
            self.pairs.append(pair)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # preprocess() does not resize an image already at `size`: x is the detector's input.
        x = preprocess(Image.fromarray(self._images[i]), self.size)[0]  # (3, S, S)
        y = torch.from_numpy(self._masks[i].astype(np.float32) / 255.0)[None]  # (1, S, S)
        return x, y


# --------------------------------------------------------------------------- loss


def deep_supervision_loss(out: U2NetOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """U2-Net's loss: BCE on the fused map plus BCE on each of the six side maps.

    Args:
        out: the model's output (its ``*_logits`` are used, for numerical stability).
        target: (B, 1, H, W) foreground in [0, 1].

    Returns:
        ``{"fused_loss": t, "side_loss": t}``; the training loss is their sum
        (the paper's sum of seven equally weighted terms).
    """
    fused = F.binary_cross_entropy_with_logits(out.fused_logits, target)
    sides = sum(F.binary_cross_entropy_with_logits(s, target) for s in out.side_logits)
    return {"fused_loss": fused, "side_loss": sides}


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.endswith("_loss"))


# ------------------------------------------------------------------------- epochs


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # One generator per (seed, epoch): a resumed run shuffles and flips exactly as
    # an uninterrupted one, with no RNG state to checkpoint.
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then constant."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


def train_one_epoch(model: U2NETP, data: MaskDataset, optimizer: torch.optim.Optimizer,
                    cfg: FinetuneConfig, epoch: int) -> float:
    """One pass over ``data``; returns the mean training loss per image."""
    model.train()
    gen = _epoch_generator(cfg.seed, epoch)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    step = epoch * len(loader)  # global step, so a resumed run continues the schedule
    total, seen = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
    for x, y in bar:
        if cfg.hflip:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        x, y = x.to(cfg.device), y.to(cfg.device)
        loss = _total(deep_supervision_loss(model(x), y))
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"training loss is {loss.item()} at epoch {epoch + 1}, step {step}; "
                f"lower lr ({cfg.lr}) or raise warmup_steps ({cfg.warmup_steps})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = warmup_lr(step, cfg.lr, cfg.warmup_steps)
        optimizer.step()
        step += 1
        total += loss.item() * x.shape[0]
        seen += x.shape[0]
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(seen, 1)


@torch.inference_mode()
def validate(model: U2NETP, data: MaskDataset, cfg: FinetuneConfig) -> dict[str, float]:
    """Validation loss and SOD metrics at the training resolution (masks binarised at 0.5)."""
    model.eval()
    metrics, total = SODMetrics(), 0.0
    for x, y in DataLoader(data, batch_size=cfg.batch_size):
        out = model(x.to(cfg.device))
        total += _total(deep_supervision_loss(out, y.to(cfg.device))).item() * x.shape[0]
        metrics.update(out.fused[:, 0].float().cpu().numpy(), y[:, 0].numpy() > 0.5)
    return {"val_loss": total / len(data), **metrics.compute()}


def _is_better(value: float, best: float | None, key: str) -> bool:
    if best is None:
        return True
    return value < best if key in _LOWER_IS_BETTER else value > best


# ------------------------------------------------------------------------ outputs


def _save_model(model: U2NETP, path: Path, cfg: FinetuneConfig, epoch: int) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "kaleido-u2netp",
        "batch_norm": str(model.config.batch_norm).lower(),
        "input_size": str(cfg.image_size),
        "epoch": str(epoch),
        "init": cfg.weights or "pretrained",
    }
    partial = path.with_suffix(".partial")
    save_file(state, str(partial), metadata=meta)
    partial.replace(path)


def _plot_curves(history: list[dict], monitor: str, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if any("val_loss" in h for h in history):
        ax_loss.plot(epochs, [h.get("val_loss", math.nan) for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss (fused + 6 sides BCE)", title="loss")
    ax_loss.legend()
    if any(monitor in h for h in history):
        ax_metric.plot(epochs, [h.get(monitor, math.nan) for h in history], "o-", color="C2")
    ax_metric.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _write_metrics(out: Path, state: dict, data_summary: dict) -> None:
    summary = {
        "best_epoch": state["best_epoch"],
        "monitor": state["monitor"],
        "best": state["best"],
        "data": data_summary,
        "history": state["history"],
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))


# ------------------------------------------------------------------------- resume


def _fresh_state(cfg: FinetuneConfig) -> dict:
    return {"epoch": 0, "best": None, "best_epoch": None, "monitor": cfg.monitor, "history": []}


def _resume(path: Path, model: U2NETP, optimizer: torch.optim.Optimizer,
            cfg: FinetuneConfig) -> dict:
    """Load ``last.pt`` into ``model`` / ``optimizer``; return the run's progress."""
    ckpt = torch.load(path, map_location=cfg.device, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    before = ckpt.get("config", {})
    changed = {k: (before[k], v) for k, v in config_to_dict(cfg).items()
               if k in before and before[k] != v and k not in ("epochs", "resume", "device")}
    if changed:
        logger.warning("resuming %s with changed settings (old, new): %s", path, changed)
    logger.info("resuming from %s after epoch %d", path, ckpt["epoch"])
    return {k: ckpt[k] for k in ("epoch", "best", "best_epoch", "monitor", "history")}


def _save_checkpoint(path: Path, model: U2NETP, optimizer, state: dict, cfg) -> None:
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": config_to_dict(cfg), **state}
    partial = path.with_suffix(".partial")
    torch.save(ckpt, partial)
    partial.replace(path)  # a crash mid-write never leaves a broken last.pt


# --------------------------------------------------------------------------- main


def _check_config(cfg: FinetuneConfig) -> Path:
    for name in ("images", "masks", "out"):
        if not getattr(cfg, name):
            raise ValueError(f"FinetuneConfig.{name} is required (a folder path)")
    if cfg.monitor not in _MONITORS:
        raise ValueError(f"monitor {cfg.monitor!r} is not one of {', '.join(_MONITORS)}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.image_size < 32 or cfg.lr <= 0:
        raise ValueError(f"epochs, batch_size, lr must be positive and image_size >= 32: {cfg}")
    return Path(cfg.out)


def _initial_model(cfg: FinetuneConfig) -> U2NETP:
    if cfg.weights is None:
        from saliency.weights import load_u2netp

        logger.info("fine-tuning from the pre-trained U2-Net-p weights")
        return load_u2netp()
    model, size = load_finetuned_u2netp(cfg.weights)
    logger.info("fine-tuning from %s (trained at %d px)", cfg.weights, size)
    return model


def _load_data(cfg: FinetuneConfig) -> tuple[MaskDataset, MaskDataset | None, dict]:
    train_pairs, val_pairs = split_pairs(find_pairs(cfg.images, cfg.masks), cfg.val_fraction,
                                         cfg.seed)
    train = MaskDataset(train_pairs, cfg.image_size)
    val = MaskDataset(val_pairs, cfg.image_size) if val_pairs else None
    if len(train) == 0:
        raise ValueError(f"no readable training pair in {cfg.images} / {cfg.masks}")
    skipped = train.skipped + (val.skipped if val else [])
    summary = {"train": len(train), "val": len(val) if val else 0,
               "skipped": {p.stem: why for p, why in skipped}}
    logger.info("fine-tuning data: %d train, %d val, %d skipped", summary["train"],
                summary["val"], len(skipped))
    return train, (val if val and len(val) else None), summary


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune U2-Net-p and write the run folder (see the module docstring).

    Args:
        cfg: the run's configuration.

    Returns:
        The content of ``metrics.json`` (history, best epoch, data counts).

    Raises:
        ValueError: bad config, unpaired files, or no readable training pair.
        FileNotFoundError: a folder or the starting weights do not exist.
    """
    out = _check_config(cfg)
    torch.manual_seed(cfg.seed)
    train, val, data_summary = _load_data(cfg)
    model = _initial_model(cfg).to(cfg.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    resuming = cfg.resume and last.is_file()
    state = _resume(last, model, optimizer, cfg) if resuming else _fresh_state(cfg)
    save_config(cfg, out)
    key = cfg.monitor if val is not None else "train_loss"
    state["monitor"] = key
    if state["epoch"] >= cfg.epochs:
        logger.info("%s already holds %d of %d epochs; nothing to train", last, state["epoch"],
                    cfg.epochs)
    for epoch in range(state["epoch"], cfg.epochs):
        train_loss = train_one_epoch(model, train, optimizer, cfg, epoch)
        row = {"epoch": epoch + 1, "train_loss": train_loss}
        if val is not None:
            row.update(validate(model, val, cfg))
        state["history"].append(row)
        state["epoch"] = epoch + 1
        if _is_better(row[key], state["best"], key):
            state["best"], state["best_epoch"] = row[key], epoch + 1
            _save_model(model, out / "model.safetensors", cfg, epoch + 1)
        _save_checkpoint(last, model, optimizer, state, cfg)
        _write_metrics(out, state, data_summary)
        _plot_curves(state["history"], key, out / "loss_curve.png")
        logger.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                    ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    _write_metrics(out, state, data_summary)
    return json.loads((out / "metrics.json").read_text())


# --------------------------------------------------------------------- evaluation


def evaluate_detector(detector: SaliencyDetector, pairs: list[MaskPair]) -> dict:
    """SOD metrics of a detector's masks against ground truth, at each mask's own size.

    Unreadable pairs are logged and skipped. U2-Net-p masks are scored as the
    raw foreground probability the detector thresholds (no min-max stretch).

    Args:
        detector: any ``SaliencyDetector``.
        pairs: from :func:`find_pairs`.

    Returns:
        ``SODMetrics.compute()`` plus ``images`` (scored) and ``skipped`` (stem -> reason).

    Raises:
        ValueError: no pair could be read.
    """
    metrics, skipped = SODMetrics(), {}
    batch = detector.cfg.batch_size
    for start in range(0, len(pairs), batch):
        loaded = []
        for pair in pairs[start:start + batch]:
            try:
                loaded.append(_load_pair(pair))
            except ImageLoadError as err:
                logger.warning("skipping %s: %s", pair.stem, err)
                skipped[pair.stem] = str(err)
        results = detector.detect_many([image for image, _ in loaded])
        for (_, gt), result in zip(loaded, results):
            metrics.update(result.mask, gt)
    if len(metrics) == 0:
        raise ValueError(f"no readable image / mask pair among {len(pairs)}")
    return {**metrics.compute(), "images": len(metrics), "skipped": skipped}
