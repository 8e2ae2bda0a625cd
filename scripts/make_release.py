"""Assemble a released model folder ``models/<name>/`` from trained runs, weights in float16.

    python scripts/make_release.py --name kaleido-fashion-v1 --dual runs/dual/full-whole/final \\
        --tagger runs/tagger/fashion-products --matcher runs/subset/finetune/new/retrieval/final \\
        --patches runs/full/cache/meta.json

Layout written (what :mod:`kaleido.demo.session` and ``kaleido tag --model NAME`` read):

    dual/      the dual encoder (config.json, dual_processor.json, tokenizer/, model.safetensors)
    tagger/    the attribute tagger (config.json, model.safetensors, report.json, reliability.png)
               and its captioner/ (SAT decoder, config.yaml, vocab.json)
    matcher/   a Kaleido-BERT retrieval fine-tune (optional)
    patches.json  the patch settings the dual encoder's and matcher's features are made with

Every floating-point tensor is stored as float16 (loaders cast back to float32). The tagger's
record of its captioner is updated to the float16 file. The model card (README.md) is written
by hand from the figures that ``kaleido tagger eval`` / ``kaleido dual eval`` give on the release.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

SKIP = {"checkpoints", "features", "tb"}   # training leftovers never released


def to_fp16(src: Path, dst: Path) -> None:
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(dst), metadata=meta)


def copy_model(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name in SKIP or item.name.endswith((".pt", ".partial")) or item.name.startswith("train"):
            continue
        if item.is_dir():
            copy_model(item, dst / item.name)
        elif item.suffix == ".safetensors":
            to_fp16(item, dst / item.name)
        elif item.suffix in (".json", ".yaml", ".txt", ".png", ".model") or item.name.startswith("tokenizer"):
            shutil.copyfile(item, dst / item.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--dual", type=Path, required=True)
    ap.add_argument("--tagger", type=Path, required=True)
    ap.add_argument("--matcher", type=Path, default=None)
    ap.add_argument("--patches", type=Path, required=True, help="a feature cache's meta.json (its config)")
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    args = ap.parse_args()

    out = args.models / args.name
    out.mkdir(parents=True, exist_ok=True)
    copy_model(args.dual, out / "dual")
    copy_model(args.tagger, out / "tagger")
    if args.matcher:
        copy_model(args.matcher, out / "matcher")
    from kaleido.tagging.features import captioner_fingerprint

    cfg_file = out / "tagger" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if (out / "tagger" / "captioner").is_dir():
        cfg["features"]["captioner"] = captioner_fingerprint(out / "tagger" / "captioner")
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "patches.json").write_text(json.dumps(json.loads(args.patches.read_text())["config"], indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MB")
    for f in sorted(out.rglob("*.safetensors")):
        print(f"  {f.relative_to(out)}: {f.stat().st_size / 2**20:.1f} MB")
    if total > 150 * 2**20:
        raise SystemExit(f"{out} is {total / 2**20:.0f} MB: over the 150 MB a release may take")


if __name__ == "__main__":
    main()
