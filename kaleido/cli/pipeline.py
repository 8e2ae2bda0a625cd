"""``kaleido pipeline``: every stage from a raw catalog to a served model, resumable."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..config import load_config
from .common import add_catalog_args


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="every stage in order: split, linear reference, patches, dual encoder, "
                                        "index, SAT, tagger, alignments, pre-training, fine-tuning, evaluation, "
                                        "release (resumable)")
    add_catalog_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder (the same command resumes it)")
    p.add_argument("--config", default="default", help="pipeline preset (default, demo, tiny) or a YAML file")
    p.add_argument("--quiet", action="store_true", help="stage output to RUN/logs/ only (progress lines and the summary still print)")
    p.add_argument("overrides", nargs="*",
                   help="<stage>.<key>=<value>: a stage's own override (pretrain.train.max_steps=60), or "
                        "<stage>.enabled / <stage>.config / finetune.tasks / patches.whole_image / release.name")
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args) -> int:
    from ..pipeline import PipelineConfig, StageFailed, format_summary, route_overrides, run_pipeline

    own, per_stage = route_overrides(list(args.overrides))
    cfg = load_config(PipelineConfig, args.config, own, component="pipeline")
    for stage, items in per_stage.items():
        getattr(cfg, stage).overrides += items
    catalog = ["--catalog", str(args.catalog), "--columns", args.columns]
    if args.image_root:
        catalog += ["--image-root", str(args.image_root)]
    if args.encoding != "auto":
        catalog += ["--encoding", args.encoding]
    try:
        summary = run_pipeline(cfg, catalog, args.out, echo=not args.quiet,
                               command="kaleido " + " ".join(shlex.quote(a) for a in args.argv))
    except StageFailed as err:
        print(f"kaleido: error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"wrote {args.out / 'summary.json'}")
    return 0 if summary["stages"] else 1
