"""ViLT-style inputs: raw pixel patches (no CNN) through the patch cache, linearly projected
and trained end to end with the transformer."""

import numpy as np
import pytest
import torch

from kaleido.cli import main
from kaleido.data import load_catalog
from kaleido.patches.backbone import BackboneConfig
from kaleido.patches.cache import FeatureCache
from kaleido.patches.extract import PatchConfig, PatchExtractor, _resize, _to_tensor
from kaleido.patches.geometry import integer_boxes, patch_boxes


def test_a_pixel_patch_is_its_cell_resized_and_flattened(sample_dir):
    cfg = PatchConfig(grids=[7], use_saliency=False, mode="crop", extras=False,
                      backbone=BackboneConfig(name="pixels", input_size=16))
    extractor = PatchExtractor.from_config(cfg)
    image = load_catalog(sample_dir).load_image(load_catalog(sample_dir).products[0])
    f = extractor.extract([image])[0]
    assert f.features.shape == (49, 768) and extractor.feature_dim == 768
    x0, y0, x1, y1 = integer_boxes(patch_boxes((0, 0, *image.size), [7]))[10]
    cell = _resize(_to_tensor(image)[:, y0:y1, x0:x1], 16)
    np.testing.assert_allclose(f.features[10], ((cell - 0.5) / 0.5).flatten().numpy(), atol=1e-6)
    assert -1.0 <= f.features.min() and f.features.max() <= 1.0
    with pytest.raises(ValueError, match="needs patches.mode=crop"):
        PatchConfig(grids=[7], use_saliency=False, extras=False, backbone=BackboneConfig(name="pixels"))


def test_vilt_cache_and_pretraining_train_the_projection(small_catalog_dir, tmp_path):
    cat, cache = str(small_catalog_dir), tmp_path / "cache"
    assert main(["data", "split", cat, "--out", str(tmp_path / "split"), "split.stratify_by=none"]) == 0
    assert main(["patches", "extract", "--catalog", cat, "--out", str(cache), "--config", "vilt"]) == 0
    features = FeatureCache(cache)
    assert features.feature_dim == 768 and features.meta["grids"] == [7] and len(features) == 12
    vilt = ["masking.strategy=random", "masking.mask_levels=[]", "masking.patches_per_level=[]", "tasks.rr=0",
            "tasks.jps=0", "tasks.cp=0", "tasks.g2cm=0", "tasks.b2cm=0", "model.patch_projector=shared"]
    out = tmp_path / "pre"
    assert main(["pretrain", "--config", "tiny", "--catalog", cat, "--cache", str(cache), "--split-file",
                 str(tmp_path / "split"), "--out", str(out), "train.max_steps=2", *vilt]) == 0
    from kaleido.config import load_config
    from kaleido.model import create_model
    from kaleido.pretrain.config import PretrainConfig
    from kaleido.pretrain.run import build_task

    trained = create_model(pretrained=str(out / "final"))
    assert trained.config.feature_dim == 768 and trained.config.grids == [7]
    cfg = load_config(PretrainConfig, "tiny", vilt, component="pretrain")
    torch.manual_seed(cfg.train.seed)                      # what pretrain() seeds before building the model
    start = build_task(cfg, 768, [7]).model.patch_embeddings.feature_proj[0].weight
    end = trained.patch_embeddings.feature_proj[0].weight
    assert end.shape == start.shape == (32, 768)
    moved = (start - end).abs().max()
    assert 0 < moved < 0.02, moved                         # the same init, moved by training: trained end to end
