"""onnxruntime for the frozen networks: the same outputs as torch, the runtime choice, the
cache identity, and extraction in worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kaleido.cli import main
from kaleido.data import load_catalog
from kaleido.onnx_runtime import OnnxRunner, resolve_runtime
from kaleido.patches.backbone import BackboneConfig
from kaleido.patches.cache import CacheError, FeatureCache, build_cache, config_dict
from kaleido.patches.extract import PatchConfig, PatchExtractor
from saliency.detector import SaliencyConfig, create_detector


def test_runner_matches_torch_per_shape_with_any_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    runner = OnnxRunner(net, name="tiny")
    for shape in ((1, 3, 32, 32), (5, 3, 32, 32), (2, 3, 24, 40)):
        x = torch.randn(shape)
        with torch.inference_mode():
            want = net(x)
            got = runner(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert sorted(runner._sessions) == [(3, 24, 40), (3, 32, 32)]  # one export per spatial size
    with pytest.raises(ValueError, match="CPU tensor"):
        runner(torch.zeros(3, 32, 32))


def test_runtime_choice():
    assert resolve_runtime("auto", "cpu", "x") == "onnxruntime"
    assert resolve_runtime("auto", "cuda:0", "x") == "torch"
    assert resolve_runtime("torch", "cpu", "x") == "torch"
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_runtime("onnxruntime", "cuda", "backbone")
    with pytest.raises(ValueError, match="runtime must be one of"):
        resolve_runtime("tensorrt", "cpu", "backbone")


def _patch_config(runtime: str, **kw) -> PatchConfig:
    bb = BackboneConfig(input_size=96, shared_input_size=160, runtime=runtime)
    sal = SaliencyConfig(input_size=160, runtime=runtime)
    return PatchConfig(backbone=bb, saliency=sal, **kw)


@pytest.fixture(scope="module")
def both_runtimes():
    return {rt: PatchExtractor.from_config(_patch_config(rt)) for rt in ("torch", "onnxruntime")}


def test_extraction_is_the_same_on_both_runtimes(both_runtimes, sample_dir):
    assert both_runtimes["onnxruntime"].backbone.runtime == "onnxruntime"
    assert both_runtimes["onnxruntime"].detector.runtime == "onnxruntime"
    assert both_runtimes["torch"].backbone._runner is None
    catalog = load_catalog(sample_dir)
    images = [catalog.load_image(p) for p in catalog.products[:3]]
    a, b = (both_runtimes[rt].extract(images) for rt in ("torch", "onnxruntime"))
    for x, y in zip(a, b):
        assert np.array_equal(x.box, y.box)  # the same saliency boxes
        for key in ("features", "rotated", "grey"):
            diff = np.abs(getattr(x, key) - getattr(y, key)).max()
            # float32 rounding; the cache stores float16 (about 3e-3 at these magnitudes)
            assert diff < 1e-3, (key, diff)
        assert np.abs(x.features).max() > 0.5  # not two zero maps agreeing


def test_the_saliency_maps_agree(sample_dir):
    catalog = load_catalog(sample_dir)
    images = [catalog.load_image(p) for p in catalog.products[3:5]]
    maps = {rt: [r.mask for r in create_detector(SaliencyConfig(input_size=160, runtime=rt)).detect_many(images)]
            for rt in ("torch", "onnxruntime")}
    for m_torch, m_ort in zip(maps["torch"], maps["onnxruntime"]):
        assert np.abs(m_torch - m_ort).max() < 1e-4 and m_torch.max() > 0.5


def test_a_cache_resumes_on_the_other_runtime(both_runtimes, small_catalog_dir, tmp_path):
    catalog = load_catalog(small_catalog_dir)
    first = build_cache(catalog, both_runtimes["torch"], tmp_path, shard_size=8, max_shards=1,
                        config=config_dict(_patch_config("torch")), progress=False)
    # another runtime and batch size: the same features, so the cache resumes
    second = build_cache(catalog, both_runtimes["onnxruntime"], tmp_path, shard_size=8,
                         config=config_dict(_patch_config("onnxruntime", batch_size=3)), progress=False)
    assert (first.shards_written, second.shards_skipped, second.shards_written) == (1, 1, 1)
    assert len(FeatureCache(tmp_path)) == 12
    with pytest.raises(CacheError, match="another config"):  # other features: refused
        build_cache(catalog, both_runtimes["onnxruntime"], tmp_path, shard_size=8,
                    config=config_dict(_patch_config("onnxruntime", roi_size=3)), progress=False)


def test_workers_write_the_cache_one_process_writes(small_catalog_dir, tmp_path):
    tiny = ["--config", "kaleido", "shard_size=4", "patches.extras=false",
            "patches.backbone.shared_input_size=96"]
    common = ["patches", "extract", "--catalog", str(small_catalog_dir), *tiny]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "workers=2"]) == 0
    one, two = FeatureCache(tmp_path / "one"), FeatureCache(tmp_path / "two")
    assert len(two) == len(one) == 12 and two.complete
    assert sorted(p.name for p in (tmp_path / "two").glob("shard-*")) == [f"shard-0000{k}" for k in range(3)]
    for pid in one.ids:
        np.testing.assert_allclose(two[pid].features, one[pid].features, atol=2e-3)
    assert main([*common, "--out", str(tmp_path / "bad"), "workers=0"]) == 2
    # fewer shards than workers: the worker with none waits for the other, nothing fails
    assert main([*common, "--out", str(tmp_path / "one-shard"), "workers=2", "shard_size=16"]) == 0
    assert len(FeatureCache(tmp_path / "one-shard")) == 12

