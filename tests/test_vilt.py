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
                 str(tmp_path / "split"), "--out", str(out), "train.max_steps=2", "augment.randaugment=true",
                 *vilt]) == 0
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


# ----------------------------------------------------------------------------- RandAugment


def _pixel_cells(g: int = 3, s: int = 4, seed: int = 0) -> np.ndarray:
    """Cells whose values are exact uint8 levels (so the image round trip is exact)."""
    levels = np.random.default_rng(seed).integers(0, 256, (g * g, 3 * s * s))
    return (levels / 127.5 - 1).astype(np.float32)


def test_randaugment_is_vilts_policy_on_the_reassembled_image():
    from torchvision.transforms import RandAugment

    from kaleido.pretrain.augment import PixelRandAugment

    aug = PixelRandAugment(grid=3, size=4)
    cells = _pixel_cells()
    image = aug.image(cells)
    assert image.shape == (3, 12, 12) and image.dtype == torch.uint8
    np.testing.assert_allclose(aug.cells(image), cells, atol=1e-6)          # an exact round trip
    # cell (row 1, col 2) is the block of the image at rows 4..7, columns 8..11
    np.testing.assert_array_equal(image[:, 4:8, 8:12].flatten().numpy(),
                                  np.round((cells[5] + 1) * 127.5).astype(np.uint8))
    # ViLT leaves out colour inversion and cutout: torchvision's op space has neither
    ops = set(RandAugment()._augmentation_space(31, (12, 12)))
    assert "Invert" not in ops and not any("utout" in op for op in ops) and {"Rotate", "Solarize"} <= ops

    a = aug(cells, np.random.default_rng(1))
    assert a.shape == cells.shape and a.dtype == np.float32 and -1 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, aug(cells, np.random.default_rng(1)))  # a pure function of the generator
    draws = [aug(cells, np.random.default_rng(k)) for k in range(8)]
    assert sum(not np.array_equal(d, cells) for d in draws) >= 6               # it does augment
    assert len({d.tobytes() for d in draws}) >= 6
    # the whole image is augmented, not each cell on its own: the same op on the assembled image
    seed = int(np.random.default_rng(1).integers(2**31 - 1))
    torch.manual_seed(seed)
    np.testing.assert_array_equal(a, aug.cells(RandAugment(2, 9, fill=[255] * 3)(image)))


def test_randaugment_refuses_a_cnn_cache_and_leaves_validation_alone():
    from kaleido.pretrain.augment import AugmentConfig, PixelRandAugment

    cnn = {"config": {"backbone": {"name": "efficientnet_lite0"}}, "grids": [1, 2, 3, 4, 5], "feature_dim": 1280}
    with pytest.raises(ValueError, match="raw-pixel cache with one grid"):
        PixelRandAugment.for_cache(cnn, AugmentConfig(randaugment=True))
    pixels = {"config": {"backbone": {"name": "pixels"}}, "grids": [7], "feature_dim": 768}
    aug = PixelRandAugment.for_cache(pixels, AugmentConfig(randaugment=True, num_ops=1, magnitude=5))
    assert (aug.grid, aug.size, aug.op.num_ops, aug.op.magnitude) == (7, 16, 1, 5)
    with pytest.raises(ValueError, match="augment.num_ops"):
        AugmentConfig(num_ops=0)


def test_pretraining_samples_see_the_augmented_image(small_catalog_dir, tmp_path):
    from kaleido.data import split_products
    from kaleido.model.processor import KaleidoProcessor
    from kaleido.pretrain.augment import AugmentConfig, PixelRandAugment
    from kaleido.pretrain.config import TaskConfig
    from kaleido.pretrain.data import PretrainDataset
    from kaleido.pretrain.masking import MaskingConfig

    cache = tmp_path / "cache"
    assert main(["patches", "extract", "--catalog", str(small_catalog_dir), "--out", str(cache),
                 "--config", "vilt"]) == 0
    features = FeatureCache(cache)
    products = split_products(load_catalog(small_catalog_dir), None, "")
    tasks = TaskConfig(rr=0, jps=0, cp=0, g2cm=0, b2cm=0, itm_clean=True)
    masking = MaskingConfig(strategy="random", mask_levels=[], patches_per_level=[])
    kw = dict(cache=features, alignments=None, processor=KaleidoProcessor.default(16, "minilm", [7]),
              masking=masking, tasks=tasks, seed=0)
    plain = PretrainDataset(products, **kw)
    aug = PixelRandAugment.for_cache(features.meta, AugmentConfig(randaugment=True))
    augmented = PretrainDataset(products, augment=aug, **kw)
    cached = features[products[0].id].features
    np.testing.assert_array_equal(plain[0]["patch_features"], cached)
    changed = [not np.allclose(augmented[i]["patch_features"], features[products[i].id].features, atol=1e-2)
               for i in range(len(products))]
    assert sum(changed) >= len(products) // 2
    first = augmented[0]
    np.testing.assert_array_equal(first["patch_features"], first["clean_patch_features"])  # every task, one image
    np.testing.assert_array_equal(first["patch_features"], augmented[0]["patch_features"])  # seeded per sample
    augmented.set_epoch(1)
    assert not np.array_equal(first["patch_features"], augmented[0]["patch_features"])     # new ops each epoch
