"""``kaleido saliency``: product masks and boxes, fine-tuning U2-Net-p, evaluation.

The ``saliency`` package (and torch with it) is imported inside the commands, so
``kaleido --help`` and the other stages start without it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..config import load_config
from .common import weights_help

#: What to run instead when the U2-Net-p weights cannot be had.
SALIENCY_FALLBACKS = ("--method spectral_residual or --method fine_grained "
                      "(OpenCV static saliency, no weights needed)")


def register(sub) -> None:
    saliency = sub.add_parser("saliency", help="foreground masks and product boxes (stage 1)")
    cmds = saliency.add_subparsers(dest="saliency_command", required=True)

    p = cmds.add_parser("predict", help="write <stem>_mask.png and <stem>_overlay.png per image")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, then optional overrides such as threshold=0.4 margin=0.1")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_detector_args(p)
    p.set_defaults(func=cmd_predict, overrides=[])

    p = cmds.add_parser("finetune", help="fine-tune U2-Net-p on image / mask pairs")
    p.add_argument("--images", required=True, help="folder of images (x.jpg)")
    p.add_argument("--masks", required=True, help="folder of masks with the same stems (x.png)")
    p.add_argument("--out", required=True, help="run folder (an existing last.pt is resumed)")
    p.add_argument("--config", default=None, help="YAML file of FinetuneConfig values")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. epochs=5 lr=5e-5")
    p.set_defaults(func=cmd_finetune)

    p = cmds.add_parser("eval", help="MAE, max-F, S-measure and max-E against ground-truth masks")
    p.add_argument("--images", required=True, help="folder of images (x.jpg)")
    p.add_argument("--masks", required=True, help="folder of masks with the same stems (x.png)")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
    _add_detector_args(p)
    p.add_argument("overrides", nargs="*", help="SaliencyConfig overrides, e.g. batch_size=4")
    p.set_defaults(func=cmd_eval)


def _add_detector_args(parser) -> None:
    parser.add_argument("--method", default=None,
                        help="u2netp (default; pre-trained weights fetched on first use), or "
                             "spectral_residual / fine_grained (OpenCV, no weights)")
    parser.add_argument("--weights", default=None,
                        help="fine-tuned model.safetensors or its run folder (u2netp)")


def _create_detector(cfg):
    from saliency.detector import create_detector

    with weights_help(SALIENCY_FALLBACKS):
        return create_detector(cfg)


def _detector_config(args, overrides: list[str]):
    from saliency.detector import SaliencyConfig

    items = list(overrides)
    if args.method:
        items.append(f"method={args.method}")
    if args.weights:
        items.append(f"weights={args.weights}")
    return load_config(SaliencyConfig, overrides=items)


def _split_overrides(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` SaliencyConfig overrides from image paths (argparse mixes them)."""
    from saliency.detector import SaliencyConfig

    keys = {f.name for f in dataclasses.fields(SaliencyConfig)}
    paths, overrides = [], []
    for token in tokens:
        key = token.split("=", 1)[0]
        is_override = "=" in token and key in keys and not Path(token).exists()
        (overrides if is_override else paths).append(token)
    return paths, overrides


def cmd_predict(args) -> int:
    from saliency.detector import detect_files
    from saliency.visualize import save_prediction

    from ..data.images import original_size, to_original

    paths, overrides = _split_overrides(args.images)
    if not paths:
        raise ValueError("no image given")
    detector = _create_detector(_detector_config(args, overrides + list(args.overrides)))
    written: dict[str, Path] = {}
    for item in detect_files(detector, paths):
        if item.error is not None:
            print(f"skipped {item.error}", file=sys.stderr)
            continue
        stem = item.path.stem
        if stem in written:
            print(f"warning: {item.path} overwrites the outputs of {written[stem]}",
                  file=sys.stderr)
        written[stem] = item.path
        save_prediction(item.image, item.result, args.out, stem)
        (w0, h0), (w, h) = original_size(item.image), item.image.size
        decoded = f" (decoded at {w}x{h})" if (w, h) != (w0, h0) else ""
        print(f"{item.path}: box {to_original(item.result.box, item.image)} in {w0}x{h0}{decoded}, "
              f"fallback {'yes' if item.result.fallback else 'no'}")
    bad = len(paths) - detector.detected
    print(f"{detector.detected} of {len(paths)} images done ({detector.fallbacks} fell back to "
          f"the whole image, {bad} unreadable); masks and overlays in {args.out}")
    return 0 if detector.detected else 1


def cmd_finetune(args) -> int:
    from saliency.finetune import FinetuneConfig, finetune

    items = [f"images={args.images}", f"masks={args.masks}", f"out={args.out}"]
    cfg = load_config(FinetuneConfig, args.config, items + list(args.overrides),
                      component="saliency")
    summary = finetune(cfg)
    best = summary["best"]
    print(f"best epoch {summary['best_epoch']} of {len(summary['history'])}: "
          f"{summary['monitor']} {best:.4f}" if best is not None else "no epoch trained")
    print(f"wrote {Path(cfg.out) / 'model.safetensors'}, metrics.json, loss_curve.png, last.pt")
    return 0


def cmd_eval(args) -> int:
    from saliency.finetune import evaluate_detector, find_pairs

    pairs = find_pairs(args.images, args.masks)
    detector = _create_detector(_detector_config(args, list(args.overrides)))
    result = evaluate_detector(detector, pairs)
    method = detector.cfg.method
    if method == "u2netp":
        method += f" ({detector.cfg.weights or 'pre-trained weights'})"
    print(f"{result['images']} images ({len(result['skipped'])} skipped), method {method}")
    print(f"MAE {result['mae']:.4f}  max-F {result['max_f']:.4f}  "
          f"S {result['s_measure']:.4f}  max-E {result['max_e']:.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
