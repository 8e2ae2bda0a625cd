"""On-disk patch-feature cache keyed by product id: float16, sharded, memory-mappable, resumable.

Layout of a cache folder::

    meta.json              grids, feature size, backbone weights, shard size, config, id fingerprint
    config.yaml            the resolved config of the run
    shard-00000/           products [0, shard_size) of the catalog, in catalog order
        features.npy       (N, P, D) float16
        positions.npy      (N, P, 5) float32
        boxes.npy          (N, 4)    float32  saliency box in pixels of the image file
        image_sizes.npy    (N, 2)    int32    (width, height) of the image file
        fallbacks.npy      (N,)      bool     saliency fell back to the whole image
        rotated.npy        (N, 3, D) float16  level-1 patch rotated 90/180/270 (with extras)
        grey.npy           (N, G, D) float16  grey level-4 patches (with extras)
        ids.json           {"ids": [...], "skipped": [{"id", "error"}]}

A shard is written into ``shard-XXXXX.tmp`` and renamed when complete, so a killed job
leaves only whole shards behind; running the same command again skips them. Shard
``k`` always holds the same products and is computed in the same batches, so a resumed
run writes byte-identical files. A rerun also re-extracts every shard holding a product
that was skipped before (unreadable or missing image) and is readable now, so fixing an
image and running the same command again is all it takes. Under ``torchrun`` each rank
takes every ``world_size``-th shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..config import save_config
from ..data import Catalog, ImageLoadError
from .extract import PatchExtractor, PatchFeatures, decode_side

log = logging.getLogger(__name__)

CACHE_VERSION = 1
META = "meta.json"
ARRAYS = {"features": np.float16, "positions": np.float32, "boxes": np.float32,
          "image_sizes": np.int32, "fallbacks": np.bool_, "rotated": np.float16, "grey": np.float16}


class CacheError(ValueError):
    """The cache folder does not match the run (other config or catalog) or is unreadable."""


@dataclass
class CacheReport:
    """What one ``build_cache`` call did."""

    shards_total: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    shards_redone: int = 0
    products_recovered: int = 0
    products_written: int = 0
    images_skipped: list = field(default_factory=list)
    saliency_fallbacks: int = 0

    def summary(self) -> str:
        redone = ""
        if self.shards_redone:
            redone = (f", {self.shards_redone} shard{'s' * (self.shards_redone > 1)} re-extracted "
                      f"({self.products_recovered} product{'s' * (self.products_recovered != 1)} "
                      "skipped before readable now)")
        return (f"{self.shards_written} shards written{redone}, {self.shards_skipped} already done, "
                f"{self.shards_total} in all; {self.products_written:,} products written, "
                f"{len(self.images_skipped)} unreadable images skipped, "
                f"{self.saliency_fallbacks} saliency fall-backs to the whole image")


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _fingerprint(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    return rank, world


def _write_meta(out: Path, meta: dict) -> None:
    tmp = out / f"{META}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, out / META)


def _check_meta(out: Path, meta: dict) -> None:
    old = json.loads((out / META).read_text())
    for key in ("version", "fingerprint", "shard_size", "config"):
        if not _same_setting(old, meta, key):
            raise CacheError(f"{out} holds a cache built with another {key} "
                             f"(catalog, shard size or config changed); use a new --out folder "
                             f"or delete the old one")


def _recoverable(shard: Path, catalog: Catalog, min_side: int) -> int:
    """How many products this shard skipped are readable now (a fixed or added image)."""
    skipped = json.loads((shard / "ids.json").read_text())["skipped"]
    readable = 0
    for item in skipped:
        try:
            catalog.load_image(catalog[item["id"]], min_side=min_side)
            readable += 1
        except (ImageLoadError, IndexError, KeyError):
            pass
    return readable


def build_cache(catalog: Catalog, extractor: PatchExtractor, out: str | Path, *,
                shard_size: int = 256, config: dict | None = None, max_shards: int | None = None,
                rank: int | None = None, world_size: int | None = None,
                progress: bool = True, run_config=None) -> CacheReport:
    """Extract patch features for every product (its first image) into ``out``.

    Shards already written are skipped, unless they hold a product that was skipped
    (unreadable image) and is readable now: such a shard is extracted again, so the cache
    is what a fresh run would write.

    Args:
        catalog: the products; their order fixes the shards.
        extractor: the patch extractor.
        out: the cache folder (created; resumed when it holds a cache of the same run).
        shard_size: products per shard.
        config: the resolved run config (stored in meta.json, checked on resume).
        max_shards: stop after writing this many shards in all ranks together (batch jobs in slices).
        rank, world_size: this process's share of the shards (default: torchrun's env).
        progress: show a progress bar.
        run_config: a config dataclass written to ``out/config.yaml`` (by rank 0), once the
            folder is known to hold a cache of the same run (a refused run writes nothing).

    Returns:
        A :class:`CacheReport`.

    Raises:
        CacheError: ``out`` holds a cache of another catalog, shard size or config.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [p.id for p in catalog]
    n_shards = (len(ids) + shard_size - 1) // shard_size
    cfg = extractor.cfg
    meta = {"version": CACHE_VERSION, "grids": list(cfg.grids), "num_patches": None,
            "feature_dim": extractor.feature_dim, "mode": cfg.mode, "extras": cfg.extras,
            "weights": extractor.backbone.weights_source, "shard_size": shard_size,
            "num_shards": n_shards, "products": len(ids), "catalog": catalog.report.source,
            "fingerprint": _fingerprint(ids), "config": config or {}}
    meta["num_patches"] = sum(g * g for g in cfg.grids)
    if (out / META).is_file():
        _check_meta(out, meta)
    else:
        _write_meta(out, meta)
    rank, world = _rank_and_world(rank, world_size)
    if run_config is not None and rank == 0:
        save_config(run_config, out)

    min_side = decode_side(cfg)
    mine = [k for k in range(n_shards) if k % world == rank]
    report = CacheReport(shards_total=n_shards)
    todo, recover = [], {}
    for k in mine:
        shard = out / _shard_name(k)
        shutil.rmtree(out / f"{_shard_name(k)}.old", ignore_errors=True)  # a killed replacement
        if not shard.is_dir():
            todo.append(k)
        elif n := _recoverable(shard, catalog, min_side):
            todo.append(k)
            recover[k] = n
    report.shards_skipped = len(mine) - len(todo)
    if max_shards is not None:  # in all: each of the ranks takes its share
        todo = todo[:max_shards // world + (rank < max_shards % world)]
    bar = tqdm(total=sum(len(ids[k * shard_size:(k + 1) * shard_size]) for k in todo),
               desc=f"patches{'' if world == 1 else f' rank {rank}'}", unit="product",
               disable=not progress)
    for k in todo:
        products = catalog.products[k * shard_size:(k + 1) * shard_size]
        _write_shard(out, k, products, catalog, extractor, report, bar, min_side)
        if k in recover:
            report.shards_redone += 1
            report.products_recovered += recover[k]
        else:
            report.shards_written += 1
    bar.close()
    log.info("%s: %s", out, report.summary())
    return report


def _write_shard(out: Path, k: int, products, catalog, extractor, report, bar, min_side) -> None:
    tmp = out / f"{_shard_name(k)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written shard of a killed run
    tmp.mkdir()
    kept, skipped, feats = [], [], []
    batch = max(1, extractor.cfg.batch_size // (5 if extractor.cfg.extras else 1))
    for start in range(0, len(products), batch):
        chunk, images = [], []
        for product in products[start:start + batch]:
            try:
                images.append(catalog.load_image(product, min_side=min_side))
                chunk.append(product.id)
            except (ImageLoadError, IndexError) as err:
                skipped.append({"id": product.id, "error": str(err)})
                log.warning("skipped product %s: %s", product.id, err)
        feats += extractor.extract(images)
        kept += chunk
        bar.update(len(products[start:start + batch]))
    arrays = _stack(feats, extractor)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "ids.json").write_text(json.dumps({"ids": kept, "skipped": skipped}, indent=1))
    final = out / _shard_name(k)
    if final.is_dir():  # re-extracted: move the old shard aside, then drop it
        old = out / f"{_shard_name(k)}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    report.products_written += len(kept)
    report.images_skipped += skipped
    report.saliency_fallbacks += int(sum(f.saliency_fallback for f in feats))


def _stack(feats: list[PatchFeatures], extractor: PatchExtractor) -> dict[str, np.ndarray]:
    cfg, d = extractor.cfg, extractor.feature_dim
    p = sum(g * g for g in cfg.grids)
    grey_n = cfg.grey_grid ** 2

    def stack(values, shape, dtype):
        return np.stack(values).astype(dtype) if values else np.zeros((0, *shape), dtype)

    arrays = {
        "features": stack([f.features for f in feats], (p, d), np.float16),
        "positions": stack([f.positions for f in feats], (p, 5), np.float32),
        "boxes": stack([f.box for f in feats], (4,), np.float32),
        "image_sizes": stack([f.image_size for f in feats], (2,), np.int32),
        "fallbacks": np.asarray([f.saliency_fallback for f in feats], dtype=np.bool_),
    }
    if cfg.extras:
        arrays["rotated"] = stack([f.rotated for f in feats], (3, d), np.float16)
        arrays["grey"] = stack([f.grey for f in feats], (grey_n, d), np.float16)
    return arrays


class FeatureCache:
    """Read a cache folder: ``cache[product_id] -> PatchFeatures`` (memory-mapped shards)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / META).is_file():
            raise CacheError(f"{self.root}: no {META}; build it with `kaleido patches extract`")
        self.meta = json.loads((self.root / META).read_text())
        self._arrays: list[dict[str, np.ndarray]] = []
        self._where: dict[str, tuple[int, int]] = {}
        self.skipped: list[dict] = []
        self._whole: dict[str, np.ndarray] = {}
        if "parts" in self.meta:
            self._open_parts()
            return
        for k in range(self.meta["num_shards"]):
            shard = self.root / _shard_name(k)
            if not shard.is_dir():
                continue
            listing = json.loads((shard / "ids.json").read_text())
            arrays = {name: np.load(shard / f"{name}.npy", mmap_mode="r")
                      for name in ARRAYS if (shard / f"{name}.npy").is_file()}
            for row, pid in enumerate(listing["ids"]):
                self._where[pid] = (len(self._arrays), row)
            self.skipped += listing["skipped"]
            self._arrays.append(arrays)
        self.complete = len(self._arrays) == self.meta["num_shards"]
        if not self.complete:
            log.warning("%s: %d of %d shards present; run the same extract command to finish",
                        self.root, len(self._arrays), self.meta["num_shards"])

    def _open_parts(self) -> None:
        """A union folder (``write_union``): the parts' products, read in place, and the
        whole-image features of its ``whole_image`` folders."""
        for folder in self.meta.get("whole_image", []):
            for file in sorted((self.root / folder).glob("chunk-*.npz")):
                stored = np.load(file, allow_pickle=False)
                self._whole.update(zip(stored["ids"].tolist(), stored["features"].astype(np.float32)))
        parts = [FeatureCache(self.root / part) for part in self.meta["parts"]]
        for part in parts:
            offset = len(self._arrays)
            self._arrays += part._arrays
            for pid, (shard, row) in part._where.items():
                self._where.setdefault(pid, (offset + shard, row))
        self.skipped = [s for part in parts for s in part.skipped if s["id"] not in self._where]
        self.complete = all(part.complete for part in parts)

    @property
    def feature_dim(self) -> int:
        return self.meta["feature_dim"]

    @property
    def num_patches(self) -> int:
        return self.meta["num_patches"]

    @property
    def ids(self) -> list[str]:
        return list(self._where)

    @property
    def whole_image_dim(self) -> int:
        """Size of the whole-image features this cache carries (0: none)."""
        return len(next(iter(self._whole.values()))) if self._whole else 0

    def has_whole_image(self, product_id: object) -> bool:
        return str(product_id) in self._whole

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, product_id: object) -> bool:
        return str(product_id) in self._where

    def __getitem__(self, product_id: str) -> PatchFeatures:
        try:
            shard, row = self._where[str(product_id)]
        except KeyError:
            raise KeyError(f"product {product_id!r} is not in the feature cache {self.root}") from None
        a = self._arrays[shard]
        return PatchFeatures(
            features=np.asarray(a["features"][row], dtype=np.float32),
            positions=np.asarray(a["positions"][row]), box=np.asarray(a["boxes"][row]),
            image_size=np.asarray(a["image_sizes"][row]), saliency_fallback=bool(a["fallbacks"][row]),
            rotated=np.asarray(a["rotated"][row], dtype=np.float32) if "rotated" in a else None,
            grey=np.asarray(a["grey"][row], dtype=np.float32) if "grey" in a else None,
            whole_image=self._whole.get(str(product_id)))


UNION_KEYS = ("version", "config", "grids", "feature_dim", "num_patches")


def write_union(out: str | Path, parts: Sequence[str | Path],
                whole_image: Sequence[str | Path] = ()) -> FeatureCache:
    """Make ``out`` a cache that reads the products of several caches in place (e.g. a split
    extracted in two runs): one folder to pass as ``--cache``. Nothing is copied; a product
    in several parts is read from the first.

    ``whole_image``: folders of whole-image feature chunks
    (:func:`kaleido.baselines.features.image_features`, e.g. a linear-probe run's
    ``features/train``), attached to the products as ``PatchFeatures.whole_image``.

    Raises:
        CacheError: a part is not a cache, or was made with other patch settings than the first.
    """
    out = Path(out)
    if (out / META).is_file() and "parts" not in json.loads((out / META).read_text()):
        raise CacheError(f"{out} holds an extracted cache; write the union to a new folder")
    metas = []
    for part in parts:
        if not (Path(part) / META).is_file():
            raise CacheError(f"{part}: no {META}; not a feature cache")
        metas.append(json.loads((Path(part) / META).read_text()))
        if "parts" in metas[-1]:
            raise CacheError(f"{part} is itself a union; list its parts instead")
        for key in UNION_KEYS:
            if not _same_setting(metas[-1], metas[0], key):
                raise CacheError(f"{part} was made with another {key} than {parts[0]}; "
                                 f"a union needs caches of the same patch settings")
    out.mkdir(parents=True, exist_ok=True)
    meta = {key: metas[0][key] for key in UNION_KEYS if key in metas[0]}
    meta["parts"] = [os.path.relpath(Path(part).resolve(), out.resolve()) for part in parts]
    if any(m.get("extras") is False for m in metas):   # pre-training refuses RR / G2CM on such a cache
        meta["extras"] = False
    for folder in whole_image:
        if not any(Path(folder).glob("chunk-*.npz")):
            raise CacheError(f"{folder}: no chunk-*.npz whole-image features (kaleido baseline linear-probe "
                             "writes them under OUT/features/<split>)")
    if whole_image:
        from kaleido.baselines.features import weights_id, feature_config_of

        made = {str(f): (c.backbone, weights_id(c.weights), c.image_size)
                for f, c in ((f, feature_config_of(f)) for f in whole_image)}
        if len(set(made.values())) > 1:
            raise CacheError("the whole-image feature folders were made by different backbones or weights "
                             f"({made}); a product's feature and a query photo's must come from the same one")
        meta["whole_image"] = [os.path.relpath(Path(f).resolve(), out.resolve()) for f in whole_image]
    _write_meta(out, meta)
    return FeatureCache(out)


def config_dict(cfg) -> dict:
    """A JSON-comparable dict of a config dataclass (for meta.json)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


#: Patch settings that change how features are computed, not what they are: a cache started
#: with one value is resumed (or joined in a union) with another.
RUN_ONLY_KEYS = frozenset({"runtime", "batch_size", "device"})


def comparable_config(config: dict | None, ignore=RUN_ONLY_KEYS) -> dict:
    """``config`` without the keys in ``ignore``, at any depth."""
    return {k: comparable_config(v, ignore) if isinstance(v, dict) else v
            for k, v in (config or {}).items() if k not in ignore}


def _same_setting(a: dict, b: dict, key: str) -> bool:
    """Whether two ``meta.json`` dicts agree on ``key`` (the config up to :data:`RUN_ONLY_KEYS`)."""
    if key == "config":
        return comparable_config(a.get(key)) == comparable_config(b.get(key))
    return a.get(key) == b.get(key)


def cached_products(products, cache: "FeatureCache", grids) -> list:
    """The products that ``cache`` holds, in order; the others are counted in a warning.

    Raises:
        ValueError: none of them is cached, or the cache was made on other grids than ``grids``.
    """
    kept = [p for p in products if p.id in cache]
    if len(kept) < len(products):
        log.warning("%d of %d products have no cached patch features and are left out",
                    len(products) - len(kept), len(products))
    if not kept:
        raise ValueError(f"none of the {len(products)} products is in the feature cache {cache.root}")
    if list(cache.meta["grids"]) != list(grids):
        raise ValueError(f"cache {cache.root} has grids {cache.meta['grids']}; the model expects {list(grids)}")
    return kept
