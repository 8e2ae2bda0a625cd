"""The demo's state: a catalog prepared for search and tagging with a released model.

:func:`prepare_demo` makes, for a catalog and a model, everything the app reads (each step
resumable, its progress reported): the tag features and tags of every product
(``kaleido tag``), the patch features the dual encoder reads (saliency + kaleido patches and
the whole-image feature), and the FAISS index. :class:`DemoSession` opens that folder once
and answers the app's questions (search, similar products, tags of an upload, the
inspector) through the library's public API.

A released model folder (``models/<name>/``) holds ``dual/`` (the dual encoder), ``tagger/``
(the attribute tagger with its captioner), optionally ``matcher/`` (a Kaleido-BERT
retrieval fine-tune: re-ranking, inspector match scores), ``patches.json`` (the patch
settings its features must be made with) and optionally ``backbone/model.safetensors`` (the
tuned backbone of the whole-image features; without it, the ImageNet one).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "kaleido-fashion-v4"   # made by `kaleido pipeline` (its model card)
STATE_NAME = "demo.json"


def resolve_model(name_or_path: str | Path) -> Path:
    """A released model folder: a path, or a name under ``models/``."""
    from kaleido.release import MODELS_DIR, release_candidates

    for path in release_candidates(name_or_path):
        if (path / "dual").is_dir() and (path / "tagger").is_dir():
            return path
    raise FileNotFoundError(f"{name_or_path}: not a released model folder (needs dual/ and tagger/; "
                            f"released models live in {MODELS_DIR})")


def patch_config_of(model: Path):
    """The :class:`PatchConfig` a release's features are made with (no pre-training extras)."""
    import dataclasses

    from omegaconf import OmegaConf

    from kaleido.patches.extract import PatchConfig

    saved = json.loads((model / "patches.json").read_text())
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PatchConfig), saved))
    return dataclasses.replace(cfg, extras=False)


def whole_image_config_of(model: Path):
    """The whole-image feature settings of a release: its tuned backbone when it ships one."""
    from kaleido.baselines.features import GlobalFeatureConfig
    from kaleido.release.assemble import BACKBONE_WEIGHTS

    tuned = Path(model) / BACKBONE_WEIGHTS
    return GlobalFeatureConfig(weights=str(tuned.resolve())) if tuned.is_file() else GlobalFeatureConfig()


def query_extractor(model: Path) -> Callable:
    """image -> PatchFeatures (with the whole-image feature) as the release's index was built,
    for photo queries; the models load on first use."""
    import dataclasses

    loaded = {}

    def extract(image):
        if not loaded:
            from kaleido.baselines.features import whole_image_extractor
            from kaleido.patches.extract import PatchExtractor

            loaded["patches"] = PatchExtractor.from_config(patch_config_of(model))
            loaded["whole"] = whole_image_extractor(whole_image_config_of(model))
        return dataclasses.replace(loaded["patches"].extract([image])[0], whole_image=loaded["whole"](image))

    return extract


@dataclass
class DemoState:
    """Where :func:`prepare_demo` put things (``OUT/demo.json``)."""

    catalog: str
    model: str
    tags: str
    cache: str
    index: str

    @classmethod
    def read(cls, out: str | Path) -> "DemoState":
        file = Path(out) / STATE_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{out}: not a prepared demo folder (run `kaleido demo prepare --out {out}`)")
        return cls(**json.loads(file.read_text()))


def prepare_demo(catalog_path: str | Path, model: str | Path, out: str | Path,
                 progress: Callable[[str], None] = print) -> DemoState:
    """Tag, extract and index ``catalog_path`` with the released ``model`` into ``out``.

    Every step keeps its outputs; a second call (or one after a kill) redoes only what is
    missing.
    """
    from kaleido.baselines.features import image_features
    from kaleido.data import load_catalog
    from kaleido.patches.cache import build_cache, write_union
    from kaleido.patches.extract import PatchExtractor
    from kaleido.search.build import build_index
    from kaleido.tagging.job import TagJobConfig, run_tag_job

    out, model = Path(out), resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(catalog_path)
    progress(f"catalog {catalog_path}: {len(catalog)} products")
    progress("1/4 tagging every product (image features, caption, attributes)")
    run_tag_job(catalog, model / "tagger", out / "tags", cache=out / "tag-features", cfg=TagJobConfig())
    progress("2/4 saliency and kaleido patches")
    build_cache(catalog, PatchExtractor.from_config(patch_config_of(model)), out / "patches")
    progress("3/4 whole-image features")
    image_features(catalog, list(catalog), out / "whole-image", whole_image_config_of(model))
    if not (out / "cache" / "meta.json").is_file():
        write_union(out / "cache", [out / "patches"], whole_image=[out / "whole-image"])
    progress("4/4 the search index")
    build_index(model / "dual", list(catalog), out / "cache", out / "index", image_store=catalog.store)
    state = DemoState(catalog=str(catalog_path), model=str(model), tags=str(out / "tags" / "tags.parquet"),
                      cache=str(out / "cache"), index=str(out / "index"))
    (out / STATE_NAME).write_text(json.dumps(state.__dict__, indent=2) + "\n")
    progress(f"ready: {out}")
    return state


_WORD = re.compile(r"[a-z0-9]+")


class DemoSession:
    """A prepared demo folder, opened once (models, index, tags).

    Args:
        out: the folder :func:`prepare_demo` wrote.
        matcher: load the release's Kaleido-BERT (re-ranking and the inspector's match score).
    """

    def __init__(self, out: str | Path, matcher: bool = True):
        import pandas as pd

        from kaleido.data import load_catalog
        from kaleido.search.engine import SearchEngine
        from kaleido.tagging.tagger import Tagger

        self.state = DemoState.read(out)
        self.model = Path(self.state.model)
        self.catalog = load_catalog(self.state.catalog)
        self.tags = pd.read_parquet(self.state.tags).set_index("id", drop=False)
        reranker = self.model / "matcher" if matcher and (self.model / "matcher").is_dir() else None
        self.engine = SearchEngine.load(self.state.index, model=self.model / "dual", cache=self.state.cache,
                                        reranker=reranker, extractor=query_extractor(self.model))
        self.tagger = Tagger.from_pretrained(self.model / "tagger")
        self.vocabulary = {w for p in self.catalog for w in _WORD.findall(
            " ".join([p.title, p.category, p.subcategory, *map(str, p.attributes.values())]).lower())}
        self._inspector = None

    @property
    def can_rerank(self) -> bool:
        return self.engine.reranker is not None

    def filter_options(self) -> dict[str, list[str]]:
        """The values of the search filters (category, gender, colour) in this catalog."""
        meta = self.engine.index.metadata
        out = {"category": sorted(set(meta["category"].astype(str)) - {""})}
        attrs = [json.loads(a) for a in meta["attributes"]]
        for key in ("gender", "baseColour"):
            out[key] = sorted({str(a.get(key, "")) for a in attrs} - {"", "None", "nan"})
        return out

    def check_query(self, query: str) -> str | None:
        """Why a query cannot be searched as it is (None when it can)."""
        if not query or not query.strip():
            return "Type what you are looking for, for example: red dress, men's running shoes, leather wallet."
        if not _WORD.findall(query.lower()):
            return f"{query!r} has no letters or digits to search for."
        return None

    @staticmethod
    def query_words(query: str) -> list[str]:
        return list(dict.fromkeys(_WORD.findall(query.lower())))

    def unknown_words(self, query: str) -> list[str]:
        """The query's words that no product mentions (the results then rest on the rest, or on nothing)."""
        return [w for w in self.query_words(query) if w not in self.vocabulary]

    def search(self, query: str, k: int = 12, filters: dict | None = None, rerank: int = 0):
        """Hits for a text query; ``filters`` keys: category, gender, baseColour (empty = any)."""
        filters = {key: v for key, v in (filters or {}).items() if v}
        return self.engine.search_text(query.strip(), k=k, filters=filters or None, rerank=rerank)

    def similar(self, image, k: int = 12):
        """Products like a catalog product (its id) or a PIL image."""
        return self.engine.search_image(image, k=k)

    def describe(self, image, title: str = ""):
        """The tagger's tags of an image (image + title when a title is given)."""
        return self.tagger.tag_images([image], [title] if title else None,
                                      inputs="image+title" if title else "image")[0]

    def image_of(self, product_id: str):
        return self.catalog.load_image(self.catalog[product_id])

    @property
    def inspector(self):
        if self._inspector is None:
            from kaleido.demo.inspect import Inspector

            matcher = self.model / "matcher" if (self.model / "matcher").is_dir() else None
            self._inspector = Inspector(patch_config_of(self.model), self.model / "tagger" / "captioner", matcher)
        return self._inspector

    def hard_negative(self, product_id: str) -> str | None:
        """A title of another product of the same subcategory (the hardest kind of negative), else any other."""
        product = self.catalog[product_id]
        same = [p for p in self.catalog if p.subcategory == product.subcategory and p.title != product.title]
        pool = same or [p for p in self.catalog if p.title != product.title]
        if not pool:
            return None
        return pool[int(np.random.default_rng(int(product_id) if product_id.isdigit() else 0).integers(len(pool)))].title
