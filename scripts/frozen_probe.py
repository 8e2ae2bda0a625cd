"""Is a Kaleido-BERT encoder's output good enough for category, before any fine-tuning? Logistic
regressions (C=1, standardised) on its frozen states, trained on one split, scored on another.

    python scripts/frozen_probe.py --checkpoint models/kaleido-fashion-v2/matcher \\
        --catalog ../shared/data/fashion-products --cache runs/full/cache-whole \\
        --split-file runs/split/fashion-products [--target subcategory]

Rows (accuracy %; image + title inputs, or ``--inputs image``): the pooled output, the mean
text state, the mean patch state (in the fused pass the patches have seen the title), the two
means side by side (``category.pooling=means``), the 1x1 patch's output state, that patch's
backbone feature, and the whole image's backbone feature (the linear reference's image
input). If these beat a fine-tuned classifier on the same encoder, the fine-tuning recipe, not
the encoder, is what falls short.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from kaleido.data import load_catalog
from kaleido.data.split import split_products
from kaleido.finetune.category import product_label, title_free_ids
from kaleido.finetune.pairs import PairInputs
from kaleido.finetune.run import load_processor
from kaleido.model import create_model
from kaleido.patches.cache import FeatureCache


def frozen_states(model, pairs: PairInputs, inputs: str = "image+text",
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    """(N, H) states of the true pairs of ``pairs``: ``pooled``, ``text mean``, ``patch mean``,
    ``1x1 patch`` (the output state of the cache's first patch, the 1x1 grid of the foreground
    box); and two raw inputs: ``1x1 patch input`` (that patch's backbone feature, what the model
    reads) and, when the cache carries them, ``whole-image input`` (the whole 224 px image's
    pooled feature: the linear reference's image input, which the model never sees).
    ``inputs="image"`` leaves the title out ([CLS] [SEP]), as ``category.inputs=image`` does."""
    empty = title_free_ids(pairs.processor.tokenizer)
    out: dict[str, list] = {k: [] for k in ("pooled", "text mean", "patch mean", "1x1 patch",
                                            "1x1 patch input")}
    if all(pairs.cache.has_whole_image(p.id) for p in pairs.products):
        out["whole-image input"] = [np.stack([pairs.cache[p.id].whole_image for p in pairs.products])]
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            idx = np.arange(start, min(start + batch_size, len(pairs)))
            b = pairs.batch(idx, idx, text_ids=[empty] * len(idx) if inputs == "image" else None)
            o = model(b["input_ids"], b["patch_features"], b["patch_positions"], b["attention_mask"])
            text, patches = o.modality_means()
            for key, value in (("pooled", o.pooled), ("text mean", text), ("patch mean", patches),
                               ("1x1 patch", o.patch_hidden[:, 0]), ("1x1 patch input", b["patch_features"][:, 0])):
                out[key].append(value.float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a Kaleido-BERT folder (pre-training final/ or a fine-tune)")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--split", default="test")
    ap.add_argument("--target", default="subcategory", help="category, subcategory or an attribute column")
    ap.add_argument("--inputs", default="image+text", choices=["image+text", "image"],
                    help="image leaves the title out, as category.inputs=image does")
    args = ap.parse_args()

    torch.manual_seed(0)
    catalog, cache = load_catalog(args.catalog), FeatureCache(args.cache)
    model = create_model(pretrained=args.checkpoint).eval()
    processor = load_processor(args.checkpoint, 64, model.config.grids)
    data = {}
    for split in (args.train_split, args.split):
        pairs = PairInputs(split_products(catalog, args.split_file, split), cache, processor)
        states = frozen_states(model, pairs, args.inputs)
        states["[text mean; patch mean]"] = np.concatenate([states["text mean"], states["patch mean"]], 1)
        data[split] = (states, [product_label(p, args.target) for p in pairs.products])
    (train, y_train), (test, y_test) = data[args.train_split], data[args.split]
    print(f"| frozen state of {args.checkpoint} ({args.inputs}) | {args.target} accuracy on {args.split} "
          f"({len(y_test)}) |")
    print("|---|---:|")
    for name in train:
        mean, std = train[name].mean(0), train[name].std(0) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=2000).fit((train[name] - mean) / std, y_train)
        print(f"| {name} | {100 * clf.score((test[name] - mean) / std, y_test):.2f} |")


if __name__ == "__main__":
    main()
