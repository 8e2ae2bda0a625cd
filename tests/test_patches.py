"""Kaleido patch geometry, both extraction modes, the rotated / grey extras, the cache."""

import numpy as np
import pytest
from PIL import Image

from kaleido.data import load_catalog
from kaleido.patches.backbone import BackboneConfig
from kaleido.patches.cache import CacheError, FeatureCache, build_cache, config_dict, write_union
from kaleido.patches.extract import PatchConfig, PatchExtractor
from kaleido.patches.geometry import (level_slices, num_patches, patch_boxes, patch_levels,
                                      patch_positions)


def test_patch_boxes_are_exact_for_every_level():
    box = (10, 20, 110, 70)  # 100 x 50
    boxes = patch_boxes(box, [1, 2, 3, 4, 5])
    assert boxes.shape == (55, 4) and num_patches([1, 2, 3, 4, 5]) == 55
    s = level_slices([1, 2, 3, 4, 5])
    np.testing.assert_allclose(boxes[s[1]], [[10, 20, 110, 70]])
    np.testing.assert_allclose(boxes[s[2]], [[10, 20, 60, 45], [60, 20, 110, 45],
                                             [10, 45, 60, 70], [60, 45, 110, 70]])
    np.testing.assert_allclose(boxes[s[5]][6], [30, 30, 50, 40])  # row 1, column 1
    for g in (3, 4, 5):  # each level tiles the box exactly
        cells = boxes[s[g]]
        area = ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum()
        assert area == pytest.approx(100 * 50)
        assert cells[:, 0].min() == 10 and cells[:, 2].max() == 110
    assert patch_levels([1, 2, 3, 4, 5]).tolist() == [0] + [1] * 4 + [2] * 9 + [3] * 16 + [4] * 25
    assert patch_boxes((0, 0, 64, 64), [8]).shape == (64, 4)


def test_positions_are_normalised_to_the_full_image():
    pos = patch_positions(patch_boxes((10, 20, 110, 70), [1, 2]), image_size=(200, 100))
    np.testing.assert_allclose(pos[0], [0.05, 0.55, 0.2, 0.7, 0.25])
    np.testing.assert_allclose(pos[4], [0.3, 0.55, 0.45, 0.7, 0.0625])
    assert pos.dtype == np.float32


def test_bad_boxes_and_configs_are_refused():
    with pytest.raises(ValueError, match="positive width"):
        patch_boxes((5, 5, 5, 10), [1])
    with pytest.raises(ValueError, match="patch mode"):
        PatchConfig(mode="fast")
    with pytest.raises(ValueError, match="extras need grids"):
        PatchConfig(grids=[8])


def _config(mode: str, **kw) -> PatchConfig:
    bb = BackboneConfig(name="efficientnet_lite0", weights="default", input_size=96,
                        shared_input_size=224)
    return PatchConfig(mode=mode, use_saliency=False, backbone=bb, batch_size=64, **kw)


@pytest.fixture(scope="module")
def extractors():
    from kaleido.patches.backbone import create_backbone

    backbone = create_backbone(_config("shared").backbone)  # shared by both modes
    return {m: PatchExtractor(_config(m), backbone) for m in ("crop", "shared")}


@pytest.fixture(scope="module")
def sample_images():
    catalog = load_catalog("data/sample")
    return [catalog.load_image(p) for p in catalog.products[:3]]


@pytest.mark.parametrize("mode", ["crop", "shared"])
def test_both_modes_give_the_same_shapes(extractors, sample_images, mode):
    out = extractors[mode].extract(sample_images)
    assert len(out) == 3
    for f, image in zip(out, sample_images):
        assert f.features.shape == (55, 1280) and f.positions.shape == (55, 5)
        assert f.rotated.shape == (3, 1280) and f.grey.shape == (16, 1280)
        assert np.isfinite(f.features).all() and np.isfinite(f.rotated).all()
        assert tuple(f.image_size) == image.size and tuple(f.box) == (0, 0, *image.size)


def test_crop_and_shared_features_agree(extractors, sample_images):
    crop, shared = (extractors[m].extract(sample_images) for m in ("crop", "shared"))
    a = np.concatenate([f.features for f in crop])
    b = np.concatenate([f.features for f in shared])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sim = a @ b.T  # (165, 165): crop patch i vs shared patch j
    matched = sim.diagonal().mean()
    mismatched = (sim.sum() - np.trace(sim)) / (sim.size - len(sim))
    # RoIAlign on a stride-32 map is not a zoomed crop (0.43 vs 0.21 measured at these sizes),
    # but the same patch must agree far better than different patches do.
    assert matched > mismatched + 0.15, (matched, mismatched)


@pytest.mark.parametrize("mode", ["crop", "shared"])
def test_extras_are_the_corrupted_patches(extractors, mode):
    ex = extractors[mode]
    noise = np.random.default_rng(0).integers(0, 255, (90, 70), np.uint8)
    f = ex.extract([Image.fromarray(noise).convert("RGB")])[0]
    level4 = f.features[level_slices([1, 2, 3, 4, 5])[4]]
    # grey of a grey image: unchanged (up to the 0.9999 sum of the luma weights)
    assert np.abs(f.grey - level4).max() < 0.01
    assert np.abs(f.rotated - f.features[0]).max() > 0.1  # rotating noise changes it

    flat = ex.extract([Image.new("RGB", (64, 64), (200, 40, 40))])[0]
    assert np.abs(flat.rotated - flat.features[:1]).max() < 0.01  # a flat image is symmetric
    assert np.abs(flat.grey - flat.features[5:21]).max() > 0.1  # red -> grey changes it


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cache_resume_after_interruption_is_byte_identical(extractors, small_catalog_dir, tmp_path):
    catalog = load_catalog(small_catalog_dir)
    (small_catalog_dir / catalog.products[5].images[0]).write_bytes(b"broken")
    ex = extractors["shared"]
    whole = build_cache(catalog, ex, tmp_path / "whole", shard_size=4, progress=False)
    assert whole.shards_written == 3 and whole.products_written == 11
    assert [s["id"] for s in whole.images_skipped] == [catalog.products[5].id]

    part = tmp_path / "part"
    first = build_cache(catalog, ex, part, shard_size=4, max_shards=1, progress=False)
    assert first.shards_written == 1
    (part / "shard-00001.tmp").mkdir()  # what a kill in the middle of shard 1 leaves
    (part / "shard-00001.tmp" / "features.npy").write_bytes(b"half")
    second = build_cache(catalog, ex, part, shard_size=4, progress=False)
    assert (second.shards_skipped, second.shards_written) == (1, 2)
    assert _files(part) == _files(tmp_path / "whole")

    cache = FeatureCache(part)
    assert len(cache) == 11 and cache.complete and catalog.products[5].id not in cache
    direct = ex.extract([catalog.load_image(catalog.products[6])])[0]
    got = cache[catalog.products[6].id]
    np.testing.assert_allclose(got.features, direct.features, rtol=2e-3, atol=2e-3)  # float16
    assert got.grey.shape == (16, 1280) and cache.meta["weights"] == ex.backbone.weights_source

    with pytest.raises(CacheError, match="another shard_size"):
        build_cache(catalog, ex, part, shard_size=5, progress=False)


def test_cache_shards_split_between_ranks(extractors, small_catalog_dir, tmp_path):
    catalog = load_catalog(small_catalog_dir)
    for rank in (0, 1):
        r = build_cache(catalog, extractors["shared"], tmp_path, shard_size=4, rank=rank,
                        world_size=2, progress=False)
        assert r.shards_written == (2 if rank == 0 else 1)
    assert len(FeatureCache(tmp_path)) == 12
    for rank, share in ((0, 1), (1, 1)):  # max_shards=2 is two shards in all, one per rank
        r = build_cache(catalog, extractors["shared"], tmp_path / "sliced", shard_size=4, rank=rank,
                        world_size=2, max_shards=2, progress=False)
        assert r.shards_written == share


def test_a_union_reads_caches_extracted_in_two_runs(extractors, small_catalog_dir, tmp_path):
    catalog = load_catalog(small_catalog_dir)
    ex = extractors["shared"]
    first, second = catalog.subset(p.id for p in catalog.products[:5]), catalog.subset(p.id for p in catalog.products[5:])
    shared = config_dict(_config("shared"))
    build_cache(first, ex, tmp_path / "a", shard_size=4, progress=False, config=shared)
    build_cache(second, ex, tmp_path / "b", shard_size=4, progress=False, config=shared)
    build_cache(catalog, ex, tmp_path / "whole", shard_size=4, progress=False)

    union = write_union(tmp_path / "union", [tmp_path / "a", tmp_path / "b"])
    assert len(union) == 12 and union.complete and union.feature_dim == 1280
    assert FeatureCache(tmp_path / "union").ids == [p.id for p in catalog]  # read back from disk
    for product in (catalog.products[0], catalog.products[11]):
        np.testing.assert_allclose(union[product.id].features,  # batches differ: float16 round-off
                                   FeatureCache(tmp_path / "whole")[product.id].features, rtol=2e-3, atol=2e-3)

    build_cache(first, extractors["crop"], tmp_path / "crop", shard_size=4, progress=False,
                config=config_dict(_config("crop")))
    with pytest.raises(CacheError, match="another config"):
        write_union(tmp_path / "mixed", [tmp_path / "a", tmp_path / "crop"])
    with pytest.raises(CacheError, match="extracted cache"):
        write_union(tmp_path / "a", [tmp_path / "b"])

    from kaleido.cli import main

    assert main(["patches", "union", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cli")]) == 0
    assert len(FeatureCache(tmp_path / "cli")) == 12
