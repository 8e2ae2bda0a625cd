"""Shared fixtures: the bundled sample, the shared real data (when present), tiny tables."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def shared_products() -> Path:
    path = SHARED_DATA / "fashion-products"
    if not (path / "products.csv").is_file():
        pytest.skip(f"real data not present at {path}")
    return path


@pytest.fixture
def small_catalog_dir(tmp_path) -> Path:
    """A writable copy of 12 sample products (CSV + images) that tests may damage."""
    import pandas as pd

    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False).head(12)
    (tmp_path / "images").mkdir()
    for rel in table["image"]:
        shutil.copyfile(SAMPLE / rel, tmp_path / rel)
    table.to_csv(tmp_path / "products.csv", index=False)
    return tmp_path


class ColourStatsExtractor:
    """A stand-in patch extractor for pre-training tests: each patch's feature is a fixed
    random projection of its mean colour (real sample images, real geometry, 32-d, fast)."""

    feature_dim = 32

    def __init__(self):
        import numpy as np

        from kaleido.patches.extract import PatchConfig

        self.cfg = PatchConfig(use_saliency=False)
        self.backbone = type("B", (), {"weights_source": "colour-stats (tests)"})()
        self.proj = np.random.default_rng(0).normal(size=(3, self.feature_dim)).astype(np.float32)

    def _feats(self, image, boxes):
        import numpy as np

        a = np.asarray(image, dtype=np.float32) / 255.0
        return np.stack([a[int(y0):max(int(y1), int(y0) + 1), int(x0):max(int(x1), int(x0) + 1)]
                         .reshape(-1, 3).mean(0) for x0, y0, x1, y1 in boxes]) @ self.proj

    def extract(self, images, boxes=None):
        import numpy as np

        from kaleido.patches.extract import PatchFeatures
        from kaleido.patches.geometry import level_slices, patch_boxes, patch_positions

        out = []
        for image in images:
            w, h = image.size
            box = np.array([0, 0, w, h], dtype=np.float32)
            cells = patch_boxes(box, self.cfg.grids)
            feats = self._feats(image, cells)
            grey = self._feats(image.convert("L").convert("RGB"), cells[level_slices(self.cfg.grids)[4]])
            rotated = np.stack([self._feats(image.rotate(90 * k, expand=True), [(0, 0, *image.rotate(
                90 * k, expand=True).size)])[0] for k in (1, 2, 3)])
            out.append(PatchFeatures(features=feats, positions=patch_positions(cells, (w, h)), box=box,
                                     image_size=np.array([w, h], dtype=np.int32), saliency_fallback=False,
                                     rotated=rotated, grey=grey))
        return out


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory):
    """24 sample products with a colour-stats feature cache, a split and synthetic
    alignments (two title words per product, each tied to a patch of levels 3-5)."""
    import numpy as np

    from kaleido.alignment.generator import AlignedPair, word_token_positions
    from kaleido.alignment.store import AlignmentWriter
    from kaleido.data import CatalogConfig, load_catalog, write_split
    from kaleido.patches.cache import build_cache
    from kaleido.tokenizer import load_tokenizer

    import pandas as pd

    root = tmp_path_factory.mktemp("pretrain_data")
    table = pd.read_csv(SAMPLE / "products.csv", dtype=str, keep_default_na=False).head(24)
    (root / "cat").mkdir()
    table.to_csv(root / "cat" / "products.csv", index=False)
    catalog = load_catalog(CatalogConfig(path=str(root / "cat"), image_root=str(SAMPLE)))
    build_cache(catalog, ColourStatsExtractor(), root / "cache", shard_size=10, progress=False)
    write_split(catalog, root / "split")
    rng = np.random.default_rng(0)
    tokenizer = load_tokenizer()
    with AlignmentWriter(root / "cache" / "alignments.jsonl") as writer:
        for product in catalog:
            words = sorted(word_token_positions(product.text, tokenizer, 64).items())[:2]
            pairs = [AlignedPair(word, tokens, level, int(rng.integers(s, s + level * level)), 0.5)
                     for word, tokens in words for level, s in ((3, 5), (4, 14), (5, 30))]
            writer.write(product.id, " ".join(w for w, _ in words), pairs)
    return {"root": root, "catalog": catalog, "catalog_dir": root / "cat", "image_root": SAMPLE, "cache": root / "cache", "split": root / "split"}


@pytest.fixture(scope="module")
def cache(pretrain_data):
    """The colour-stats feature cache of ``pretrain_data``."""
    from kaleido.patches.cache import FeatureCache

    return FeatureCache(pretrain_data["cache"])


@pytest.fixture(scope="module")
def products(pretrain_data):
    return list(pretrain_data["catalog"])


@pytest.fixture(scope="module")
def dual_dir(cache, tmp_path_factory):
    """A random tiny dual encoder (random is enough: indexes and first stages must reproduce its scores)."""
    import torch

    from kaleido.config import load_config
    from kaleido.dual import DualRunConfig, build_dual_task
    from kaleido.dual.run import fit_to_cache

    torch.manual_seed(0)
    cfg = fit_to_cache(load_config(DualRunConfig, "tiny", component="dual"), cache)
    path = tmp_path_factory.mktemp("dual") / "final"
    build_dual_task(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory):
    """A random tiny Kaleido-BERT retrieval task (32-d features, like the fixture cache)."""
    import torch

    from kaleido.finetune.retrieval import RetrievalConfig, RetrievalTask
    from kaleido.model import create_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("rerank") / "retrieval"
    RetrievalTask(create_model("tiny"), RetrievalConfig()).save_pretrained(path)
    return path
