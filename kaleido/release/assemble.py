"""Assemble a released model folder from trained runs, every weight in float16.

Layout written (what :mod:`kaleido.demo.session`, ``kaleido tag --model`` and
``kaleido eval --model`` read):

    dual/      the dual encoder (config.json, dual_processor.json, tokenizer/, model.safetensors)
    tagger/    the attribute tagger (config.json, model.safetensors, report.json, reliability.png)
               and its captioner/ (SAT decoder, config.yaml, vocab.json)
    matcher/   a Kaleido-BERT fine-tune with an ITM head: a retrieval or multitask ``final/`` (optional)
    backbone/  model.safetensors: the tuned image backbone whose whole-image features ``dual/``
               reads (``kaleido baseline tune-backbone``; optional: without it, the ImageNet one)
    patches.json  the patch settings the dual encoder's and matcher's features are made with

Every floating-point tensor is stored as float16 (loaders cast back to float32). The tagger's
record of its captioner is updated to the float16 file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: Training leftovers never released.
SKIP = {"checkpoints", "features", "tb"}
#: What a release may weigh in all (the repository's limit for committed weights).
MAX_BYTES = 150 * 2**20


def to_fp16(src: Path, dst: Path) -> None:
    """Copy a safetensors file with its floating-point tensors cast to float16 (byte for byte
    when they already are: a part reused from an earlier release stays the same file, which
    git stores once)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    if all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point()):
        shutil.copyfile(src, dst)
        return
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(dst), metadata=meta)


def copy_model(src: Path, dst: Path) -> None:
    """A model folder's configs, tokenizer and weights (float16), without checkpoints and caches."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(Path(src).iterdir()):
        if item.name in SKIP or item.name.endswith((".pt", ".partial")) or item.name.startswith("train"):
            continue
        if item.is_dir():
            copy_model(item, dst / item.name)
        elif item.suffix == ".safetensors":
            to_fp16(item, dst / item.name)
        elif item.suffix in (".json", ".yaml", ".txt", ".png", ".model") or item.name.startswith("tokenizer"):
            shutil.copyfile(item, dst / item.name)


def patch_settings(cache_meta: Path) -> dict:
    """The patch config of a feature cache's ``meta.json`` (an extracted cache or a union)."""
    meta = json.loads(Path(cache_meta).read_text())
    if "config" not in meta:
        raise ValueError(f"{cache_meta}: no patch config in this meta.json; give an extracted cache's meta.json")
    return meta["config"]


BACKBONE_WEIGHTS = "backbone/model.safetensors"


def assemble_release(out: str | Path, dual: str | Path, tagger: str | Path, patches: str | Path,
                     matcher: str | Path | None = None, backbone: str | Path | None = None) -> dict[str, int]:
    """Write the release folder ``out`` from a dual encoder, a tagger (with its captioner), a
    feature cache's ``meta.json``, optionally a Kaleido-BERT fine-tune and optionally the tuned
    backbone file (``OUT/backbone/model.safetensors`` of ``kaleido baseline tune-backbone``)
    whose whole-image features the dual encoder was trained on.

    Returns:
        ``{relative path: bytes}`` of every file written.

    Raises:
        FileNotFoundError: a part is missing.
        ValueError: the folder would weigh more than :data:`MAX_BYTES`.
    """
    from kaleido.tagging.features import captioner_fingerprint

    out = Path(out)
    parts = {"dual": dual, "tagger": tagger, **({"matcher": matcher} if matcher else {})}
    for name, path in parts.items():
        if not Path(path).is_dir():
            raise FileNotFoundError(f"release part {name}: {path} is not a folder")
    if backbone is not None and not Path(backbone).is_file():
        raise FileNotFoundError(f"release part backbone: {backbone} is not a file (kaleido baseline tune-backbone "
                                "writes OUT/backbone/model.safetensors)")
    settings = patch_settings(Path(patches))
    for name in ("dual", "tagger", "matcher", "backbone"):   # a rebuild replaces the release: nothing of the last one stays
        if (out / name).exists():
            shutil.rmtree(out / name)
    (out / "README.md").unlink(missing_ok=True)   # the card describes one build; write it again for this one
    for name, path in parts.items():
        copy_model(Path(path), out / name)
    if backbone is not None:
        (out / BACKBONE_WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
        to_fp16(Path(backbone), out / BACKBONE_WEIGHTS)
    cfg_file = out / "tagger" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if (out / "tagger" / "captioner").is_dir():
        cfg["features"]["captioner"] = captioner_fingerprint(out / "tagger" / "captioner")
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "patches.json").write_text(json.dumps(settings, indent=2) + "\n")
    files = {str(f.relative_to(out)): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()}
    total = sum(files.values())
    if total > MAX_BYTES:
        raise ValueError(f"{out} is {total / 2**20:.0f} MB: over the {MAX_BYTES / 2**20:.0f} MB a release may take")
    return files
