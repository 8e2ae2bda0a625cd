"""Does a mirrored second view at test time help the tuned backbone? (test-time augmentation)

Scores val and test of a ``kaleido baseline tune-backbone`` run (or a pipeline's ``backbone``
stage) three ways with its own linear maps, on the same KB-101 draws: the served features
(the image alone), the pooled feature of the mirrored image alone, and the mean of the two.
The mirrored features are made by the run's saved float16 backbone and cached (resumable).

    python scripts/mirror_tta.py --run runs/pipeline/v4/backbone --catalog ../shared/data/fashion-products \
        --split-file runs/pipeline/v4/split --out runs/tta/v4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kaleido.baselines.features import (chunked_features, feature_config_of, image_features, load_feature_backbone,
                                        product_records, weights_id)
from kaleido.baselines.linear_probe import LinearDualEncoder, ProbeEvalConfig, retrieval_from_scores, similarity
from kaleido.data.load import load_catalog
from kaleido.data.split import split_products


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a tune-backbone run: model/, features/<split>/")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--out", required=True, help="mirrored features and result.json")
    args = ap.parse_args()

    run, out = Path(args.run), Path(args.out)
    catalog = load_catalog(args.catalog)
    maps = LinearDualEncoder.from_pretrained(run / "model")
    result = {}
    for split in ("val", "test"):
        cfg = feature_config_of(run / "features" / split)        # the saved backbone the features came from
        products = split_products(catalog, args.split_file, split)
        ids, plain = image_features(catalog, products, run / "features" / split, cfg)   # cached: read back
        backbone = load_feature_backbone(cfg)

        def mirrored(images: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return backbone.forward_pooled(backbone.normalize(images.flip(-1))).float().numpy()

        m_ids, mirror = chunked_features(catalog, products, out / f"mirrored-{split}", mirrored,
                                         {"backbone": cfg.backbone, "weights": weights_id(cfg.weights),
                                          "view": "mirrored"}, cfg.image_size, cfg.batch_size, cfg.chunk)
        if list(m_ids) != list(ids):
            raise ValueError(f"{split}: the mirrored pass read other images than the served one")
        titles = np.load(run / "features" / f"{split}-titles.npz", allow_pickle=False)
        if list(titles["ids"]) != list(ids):
            raise ValueError(f"{split}: {run}/features/{split}-titles.npz holds other products")
        rec = product_records(products, ids)
        result[split] = {}
        for name, image in (("image", plain), ("mirrored", mirror), ("mean of both", (plain + mirror) / 2)):
            r = retrieval_from_scores(similarity(maps, image, titles["text"]), rec["subcategory"], rec["category"],
                                      rec["titles"], ProbeEvalConfig())
            full = r["full_catalog"]["TIR"]
            result[split][name] = {"SumR": r["SumR"], "SumR_std": r["std"]["SumR"],
                                   "full_catalog_TIR": {k: full[k] for k in ("R@1", "R@10")}}
            print(f"{split:5s} {name:13s} SumR {r['SumR']:.1f} ± {r['std']['SumR']:.1f}, full-catalog TIR "
                  f"R@1 {100 * full['R@1']:.2f} / R@10 {100 * full['R@10']:.2f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
