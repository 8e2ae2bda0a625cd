"""``kaleido release``: assemble a released model folder from trained runs, and write its model card."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("release", help="assemble a released model (float16) and write its model card")
    cmds = p.add_subparsers(dest="release", required=True)
    b = cmds.add_parser("build", help="dual encoder + tagger (+ Kaleido-BERT matcher) -> one release folder")
    b.add_argument("--out", type=Path, required=True, help="the release folder (models/<name> to ship it)")
    b.add_argument("--dual", type=Path, required=True, help="a dual encoder's final/ folder")
    b.add_argument("--tagger", type=Path, required=True, help="a tagger folder (kaleido tagger train --out)")
    b.add_argument("--matcher", type=Path, default=None,
                   help="a Kaleido-BERT retrieval or multitask fine-tune's final/ (re-ranking, match score)")
    b.add_argument("--patches", type=Path, required=True,
                   help="the meta.json of the feature cache the dual encoder and matcher were trained on")
    b.add_argument("--backbone", type=Path, default=None,
                   help="the tuned backbone whose whole-image features the dual encoder reads "
                        "(kaleido baseline tune-backbone's OUT/backbone/model.safetensors)")
    b.set_defaults(func=cmd_build)
    c = cmds.add_parser("card", help="write RELEASE/README.md from a kaleido pipeline run and the release's figures")
    c.add_argument("--run", type=Path, required=True, help="the kaleido pipeline run folder")
    c.add_argument("--release", type=Path, required=True)
    c.add_argument("--name", required=True, help="the release's name (models/<name>)")
    c.add_argument("--eval-json", type=Path, default=None, help="kaleido eval --model ... --json of the release")
    c.add_argument("--tagger-json", type=Path, default=None, help="kaleido tagger eval --model ... --json")
    c.add_argument("--reused", nargs="+", default=[], metavar="PART=FOLDER",
                   help="parts taken as they are from an earlier release, not trained by this run")
    c.set_defaults(func=cmd_card)


def cmd_build(args) -> int:
    from ..release.assemble import assemble_release

    files = assemble_release(args.out, args.dual, args.tagger, args.patches, args.matcher, args.backbone)
    print(f"{args.out}: {sum(files.values()) / 2**20:.1f} MB")
    for path, size in files.items():
        if path.endswith(".safetensors"):
            print(f"  {path}: {size / 2**20:.1f} MB")
    return 0


def cmd_card(args) -> int:
    from ..release.card import write_model_card

    out = write_model_card(args.run, args.release, args.name, args.eval_json, args.tagger_json, args.reused)
    print(f"wrote {out}")
    return 0
