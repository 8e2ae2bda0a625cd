"""``kaleido sat``: train the Show-Attend-Tell captioner, caption images, score captions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config, save_config
from .common import add_catalog_args, catalog_config, exit_code, load_run_catalog, readable_images
from ..data import LoadReport, load_catalog, read_split, split_catalog, write_split


@dataclass
class SATCaptionConfig:
    """``kaleido sat caption`` / ``eval``: which model and how it decodes.

    Attributes:
        model: the run folder of ``kaleido sat train``.
        beam_size: beam width (1 = greedy).
        max_len: most words per caption (0 = the model's own).
    """

    model: str = ""
    beam_size: int = 3
    max_len: int = 0


def register(sub) -> None:
    sat = sub.add_parser("sat", help="Show-Attend-Tell captioner (stage 3)")
    cmds = sat.add_subparsers(dest="sat_command", required=True)

    p = cmds.add_parser("train", help="train the captioner on a catalog's titles")
    add_catalog_args(p)
    p.add_argument("--split-file", type=Path, default=None,
                   help="split.csv or its folder (default: a new split written into OUT/split)")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumed if it has last.pt)")
    p.add_argument("--config", default="default", help="sat preset (default, tiny) or YAML file")
    p.add_argument("overrides", nargs="*", help="e.g. epochs=10 model.hidden_dim=256 lr=1e-3")
    p.set_defaults(func=cmd_train)

    p = cmds.add_parser("caption", help="caption images and draw each word's attention")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", type=Path, required=True, help="run folder of `kaleido sat train`")
    p.add_argument("--out", type=Path, required=True, help="folder for <stem>_attention.png")
    p.add_argument("--beam-size", type=int, default=3)
    p.set_defaults(func=cmd_caption)

    p = cmds.add_parser("eval", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr against the titles")
    p.add_argument("--model", type=Path, required=True, help="run folder of `kaleido sat train`")
    add_catalog_args(p)
    p.add_argument("--split-file", type=Path, required=True, help="split.csv or its folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (the slow metric)")
    p.add_argument("--json", type=Path, default=None,
                   help="write scores and every caption as JSON (config.yaml beside it)")
    p.set_defaults(func=cmd_eval)


def cmd_train(args) -> int:
    from sat_captioner.train import SATTrainConfig, train_sat

    cfg = load_config(SATTrainConfig, args.config, list(args.overrides), component="sat")
    catalog = load_run_catalog(args, args.out)
    if args.split_file is None:
        path = write_split(catalog, args.out / "split")
        print(f"wrote a new split {path}")
        args.split_file = path
    result = train_sat(catalog, read_split(args.split_file), cfg, args.out)
    if result.best_epoch is None:
        print(f"{args.out}: no epoch trained (epochs={cfg.epochs} already done)")
        return 0
    print(f"best epoch {result.best_epoch} ({result.monitor} {result.best:.4f}); wrote "
          f"{args.out / 'model.safetensors'}, config.yaml, vocab.json, log.csv, loss_curve.png, "
          f"last.pt")
    return 0


def cmd_caption(args) -> int:
    from sat_captioner import Captioner
    from sat_captioner.visualize import draw_attention

    captioner = Captioner.from_pretrained(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    save_config(SATCaptionConfig(model=str(args.model), beam_size=args.beam_size), args.out)
    failures = []
    for path, image in readable_images(args.images, failures):
        [result] = captioner.caption([image], beam_size=args.beam_size)
        target = args.out / f"{path.stem}_attention.png"
        draw_attention(image, result, target)
        print(f"{path}: {result.text or '(empty caption)'} -> {target}")
    return exit_code(failures, args.images)


def cmd_eval(args) -> int:
    import torch

    from sat_captioner import Captioner, caption_scores
    from sat_captioner.metrics import format_scores

    catalog = load_catalog(catalog_config(args))
    products = split_catalog(catalog, read_split(args.split_file), args.split)
    if not len(products):
        raise ValueError(f"split {args.split!r} of {args.split_file} has no products")
    captioner = Captioner.from_pretrained(args.model)
    report = LoadReport(source=catalog.report.source)
    hyps, refs, ids, batch = {}, {}, [], []

    def flush():
        if batch:
            with torch.no_grad():
                results = captioner.caption(batch, beam_size=args.beam_size)
            for pid, result in zip(ids, results):
                hyps[pid] = result.text
            ids.clear()
            batch.clear()

    for product, _, image in products.iter_images(report=report):
        ids.append(product.id)
        batch.append(image)
        refs[product.id] = [product.title]
        if len(batch) == 32:
            flush()
    flush()
    if report.skipped:
        print(report.summary())
    if not hyps:
        raise ValueError(f"no readable image in split {args.split!r}")
    scores = caption_scores(refs, hyps, meteor=not args.no_meteor)
    print(f"{args.split}: {len(hyps)} products, beam {args.beam_size}")
    print(format_scores(scores))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"split": args.split, "products": len(hyps), "beam_size": args.beam_size,
                   "skipped": dict(report.skipped), "scores": scores,
                   "captions": {pid: {"caption": hyps[pid], "title": refs[pid][0]} for pid in hyps}}
        args.json.write_text(json.dumps(payload, indent=2))
        save_config(SATCaptionConfig(model=str(args.model), beam_size=args.beam_size),
                    args.json.parent, f"{args.json.stem}.config.yaml")
        print(f"wrote {args.json}")
    return 0
