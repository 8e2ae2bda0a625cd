"""Experiment: does fine-tuning the image backbone's last stages beat the frozen linear reference?

Every dual encoder measured so far reads frozen EfficientNet-Lite0 features, and all of them
end at the linear reference's level (KB-101 SumR about 440-443). This tests whether the image
side is the limit: the reference's recipe (standardised whole-image feature and mean-pooled
MiniLM title, two linear maps to 256-d, symmetric InfoNCE with same-title products never
negatives), but with the backbone's stages from ``--from-stage`` on (and its 1x1 head conv)
trained too, on the whole image at 224 px. The frozen part runs once: its activations (the
input of stage ``--from-stage``, float16, the image and its mirror for training products) are
cached in chunks, so training only runs the tail. ``--from-stage 7`` trains the head conv
only; ``--tail-lr 0`` keeps the tail frozen, which is the linear reference itself (the check
that this script scores like ``kaleido baseline linear-probe``).

    python scripts/partial_finetune.py --catalog ../shared/data/fashion-products \
        --split-file runs/systems/base/split --out runs/partial/stage6 --from-stage 6 [--epochs 15]

Writes OUT/activations/ and OUT/titles.npz (the cache; ``--cache DIR`` puts them there, to
share between runs), OUT/checkpoint.pt (each epoch; a killed run resumes from it), OUT/log.csv
(loss, val SumR per epoch) and OUT/eval-test.json (the full KB-101 protocol and full-catalog
ranks on the val and test splits, as ``kaleido eval`` scores them).
BatchNorm statistics stay frozen (batch statistics of 256 fashion photos would replace
ImageNet's); its affine weights train with the tail.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kaleido.baselines.features import GlobalFeatureConfig, TitleEncoder, _image_tensor
from kaleido.baselines.linear_probe import LinearDualEncoder, ProbeEvalConfig, retrieval_from_scores
from kaleido.contrastive import info_nce
from kaleido.data import load_catalog
from kaleido.data.catalog import LoadReport
from kaleido.data.split import split_products
from kaleido.evaluation import KB101Config
from kaleido.evaluation.kb101 import title_codes
from kaleido.patches.backbone import BackboneConfig, create_backbone

log = logging.getLogger("partial_finetune")
CHUNK = 512


def split_backbone(backbone, stage: int) -> tuple[nn.Module, nn.Module]:
    """(frozen trunk: image -> input of ``blocks[stage]``, tail: that -> pooled (B, C) feature)."""
    m = backbone.model
    if not 0 <= stage <= len(m.blocks):
        raise ValueError(f"--from-stage must lie in [0, {len(m.blocks)}], not {stage}")
    trunk = nn.Sequential(m.conv_stem, m.bn1, *m.blocks[:stage])
    tail = nn.Sequential(*m.blocks[stage:], m.conv_head, m.bn2, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, tail


def cache_activations(catalog, products, trunk, backbone, folder: Path, views: int, size: int = 224) -> tuple[list, np.ndarray]:
    """(ids, (N, views, C, H, W) float16) of the trunk's output per product; chunked and resumable.
    View 1 is the mirrored image. Unreadable images are reported and left out."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, acts = [], []
    report = LoadReport(source=str(folder))
    with tqdm(total=len(products), desc=f"trunk activations ({folder.name})", unit="img") as bar:
        for k in range(0, len(products), CHUNK):
            chunk, file = products[k:k + CHUNK], folder / f"chunk-{k // CHUNK:05d}.npz"
            wanted = [p.id for p in chunk]
            if file.is_file():
                stored = np.load(file, allow_pickle=False)
                if list(stored["requested"]) == wanted and stored["acts"].shape[1] == views:
                    ids += list(stored["ids"]); acts.append(stored["acts"]); bar.update(len(chunk))
                    continue
            got_ids, got, pending = [], [], []

            def flush():
                x = backbone.normalize(torch.stack(pending))
                with torch.inference_mode():
                    outs = [trunk(x.contiguous(memory_format=torch.channels_last))]
                    if views == 2:
                        outs.append(trunk(x.flip(-1).contiguous(memory_format=torch.channels_last)))
                got.append(torch.stack(outs, 1).half().numpy())
                pending.clear()

            for product, _, image in catalog.iter_images(chunk, report=report):
                pending.append(_image_tensor(image, size)); got_ids.append(product.id)
                if len(pending) == 32:
                    flush()
                bar.update(1)
            if pending:
                flush()
            bar.update(len(chunk) - len(got_ids))
            array = np.concatenate(got)
            tmp = file.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.array(got_ids, dtype=str), requested=np.array(wanted, dtype=str), acts=array)
            tmp.replace(file)
            ids += got_ids; acts.append(array)
    if report.skipped:
        log.warning(report.summary())
    return ids, np.concatenate(acts)


class PartialDual(LinearDualEncoder):
    """The linear reference (``LinearDualEncoder``), its image map on top of a trainable backbone tail."""

    def __init__(self, tail: nn.Module, image_dim: int, text_dim: int):
        super().__init__(image_dim, text_dim)
        self.tail = tail

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.tail.modules():  # frozen BatchNorm statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def pooled(self, acts: torch.Tensor) -> torch.Tensor:
        return self.tail(acts.float().contiguous(memory_format=torch.channels_last))

    def embed_image(self, acts: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) trunk activations -> (N, dim) unit vectors."""
        return super().embed_image(self.pooled(acts))


@torch.no_grad()
def embed(model: PartialDual, acts: np.ndarray, text: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    img = torch.cat([model.embed_image(torch.from_numpy(acts[i:i + batch, 0])) for i in range(0, len(acts), batch)])
    txt = model.embed_text(torch.from_numpy(text))
    return img.numpy(), txt.numpy()


def evaluate(model, data: dict, cfg: ProbeEvalConfig) -> dict:
    img, txt = embed(model, data["acts"], data["text"])
    return retrieval_from_scores(img @ txt.T, data["subcategory"], data["category"], data["titles"], cfg)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", help="folder of the trunk activations and title vectors (default: OUT; share it between runs)")
    ap.add_argument("--from-stage", type=int, default=6, help="first trainable stage of blocks (7: head conv only)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3, help="the two linear maps and the temperature")
    ap.add_argument("--tail-lr", type=float, default=1e-4, help="the backbone tail (0: frozen, the linear reference)")
    ap.add_argument("--weight-decay", type=float, default=0.01, help="AdamW (the reference's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--negatives", type=int, default=100, help="KB-101 negatives per query (fewer only for tiny catalogs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    catalog = load_catalog(args.catalog)
    backbone = create_backbone(BackboneConfig(name=GlobalFeatureConfig().backbone))
    trunk, tail = split_backbone(backbone, args.from_stage)
    data = {}
    cache = Path(args.cache or out)
    titles_file = cache / "titles.npz"
    if titles_file.is_file():
        stored = np.load(titles_file, allow_pickle=False)
        title_vec = dict(zip(stored["ids"], stored["text"]))
    else:
        title_vec = None
    for split in ("train", "val", "test"):
        products = split_products(catalog, args.split_file, split)
        ids, acts = cache_activations(catalog, products, trunk, backbone, cache / "activations" / f"stage{args.from_stage}-{split}",
                                      views=2 if split == "train" else 1)
        by_id = {p.id: p for p in products}
        kept = [by_id[i] for i in ids]
        data[split] = {"acts": acts, "titles": [p.title for p in kept], "category": [p.category for p in kept],
                       "subcategory": [p.subcategory for p in kept], "ids": ids}
    if title_vec is None:
        all_ids = [i for s in data.values() for i in s["ids"]]
        vecs = TitleEncoder()([t for s in data.values() for t in s["titles"]], progress=True)
        np.savez(titles_file, ids=np.array(all_ids, dtype=str), text=vecs)
        title_vec = dict(zip(all_ids, vecs))
    for s in data.values():
        s["text"] = np.stack([title_vec[i] for i in s["ids"]]).astype(np.float32)

    protocol = ProbeEvalConfig(kb101=KB101Config(negatives=args.negatives))
    torch.manual_seed(args.seed)
    model = PartialDual(tail, int(backbone.feature_dim), data["train"]["text"].shape[1])
    tail.requires_grad_(args.tail_lr > 0)
    with torch.no_grad():  # standardise with the frozen tail's statistics on the training products
        pooled = torch.cat([model.pooled(torch.from_numpy(data["train"]["acts"][i:i + 256, 0]))
                            for i in range(0, len(data["train"]["acts"]), 256)])
        model.image_mean.copy_(pooled.mean(0)); model.image_std.copy_(pooled.std(0).clamp_min(1e-6))
        t = torch.from_numpy(data["train"]["text"])
        model.text_mean.copy_(t.mean(0)); model.text_std.copy_(t.std(0).clamp_min(1e-6))
    heads = [p for n, p in model.named_parameters() if not n.startswith("tail.")]
    groups = [{"params": heads, "lr": args.lr}]
    if args.tail_lr > 0:
        groups.append({"params": list(tail.parameters()), "lr": args.tail_lr})
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    n = len(data["train"]["acts"])
    steps_per_epoch = n // args.batch
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ckpt, start_epoch = out / "checkpoint.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        start_epoch = int(state["epoch"])
        log.info("resumed after epoch %d", start_epoch)
    groups_t = torch.from_numpy(title_codes(data["train"]["titles"]))
    logf = out / "log.csv"
    if start_epoch == 0:
        with logf.open("w", newline="") as f:
            csv.writer(f).writerow(["epoch", "loss", "val_sumr", "seconds"])
    for epoch in range(start_epoch, args.epochs):
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order, flips = torch.randperm(n, generator=g), torch.randint(0, 2, (n,), generator=g)
        model.train()
        t0, losses = time.perf_counter(), []
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", unit="step"):
            idx = order[b * args.batch:(b + 1) * args.batch].numpy()
            acts = torch.from_numpy(data["train"]["acts"][idx, flips[idx].numpy()])
            loss = info_nce(model.embed_image(acts), model.embed_text(torch.from_numpy(data["train"]["text"][idx])),
                            model.logit_scale, groups_t[idx])
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
            losses.append(float(loss.detach()))
        val = evaluate(model, data["val"], protocol)
        seconds = time.perf_counter() - t0
        log.info("epoch %d: loss %.3f, val SumR %.1f (%.0f s)", epoch + 1, np.mean(losses), val["SumR"], seconds)
        with logf.open("a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, f"{np.mean(losses):.4f}", f"{val['SumR']:.2f}", f"{seconds:.1f}"])
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch + 1}, tmp)
        tmp.replace(ckpt)
    result = {"args": vars(args), "train_products": n, "val": evaluate(model, data["val"], protocol),
              "test": evaluate(model, data["test"], protocol)}
    (out / "eval-test.json").write_text(json.dumps(result, indent=2, default=float))
    r = result["test"]
    print(f"test KB-101 SumR {r['SumR']:.1f} ± {r['std']['SumR']:.1f}; val {result['val']['SumR']:.1f}; "
          f"full-catalog TIR R@1 {r['full_catalog']['TIR']['R@1'] * 100:.2f}")
    return result


if __name__ == "__main__":
    main()
