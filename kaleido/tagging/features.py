"""The tagger's per-product features, made in one backbone pass and cached.

For each product image: the frozen backbone's grid at the captioner's input size (the
Show-Attend-Tell encoder), its mean (the pooled image feature the classifiers read), the
caption the SAT decoder writes from that grid, and the colour histogram of
:mod:`kaleido.tagging.colour`. The expensive part (decoding the image and the backbone) is
done once per image; re-tagging with new heads reads the cache.

The cache is a folder of chunk files (``chunk-*.npz``, each written whole or not at all)
and a ``meta.json`` naming the backbone, input size and captioner they were made with; a
cache made with other settings is refused with a message. Products whose image cannot be
read are stored with the reason, so a resumed job reports them without retrying blindly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kaleido.data.catalog import Catalog, Product
from kaleido.data.images import ImageLoadError
from kaleido.tagging.colour import COLOUR_DIM, colour_features

log = logging.getLogger(__name__)

META_NAME = "meta.json"


@dataclass
class TagFeatureConfig:
    """How the tag features are made (stored in the cache's and the tagger's config)."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 320        # the SAT encoder's input size (one pass feeds both)
    colour_dim: int = COLOUR_DIM
    captioner: str = ""          # fingerprint of the SAT decoder the captions come from ("" = none)
    beam_size: int = 3


@dataclass
class FeatureRows:
    """Features of some products, row-aligned with ``ids``; ``bad`` maps the ids whose image
    could not be read to the reason."""

    ids: list[str]
    image: np.ndarray            # (N, C) float32 pooled backbone feature
    colour: np.ndarray           # (N, COLOUR_DIM) float32
    caption: list[str]
    bad: dict[str, str]

    @classmethod
    def empty(cls, image_dim: int) -> "FeatureRows":
        return cls([], np.zeros((0, image_dim), np.float32), np.zeros((0, COLOUR_DIM), np.float32), [], {})


def captioner_fingerprint(path: str | Path | None) -> str:
    """A short hash of a SAT run's decoder weights ("" without one)."""
    if not path:
        return ""
    from sat_captioner.captioner import MODEL_FILE

    digest = hashlib.sha256((Path(path) / MODEL_FILE).read_bytes()).hexdigest()
    return digest[:16]


class TagFeatureExtractor:
    """Images -> :class:`FeatureRows` (one backbone pass: pooled feature and caption)."""

    def __init__(self, cfg: TagFeatureConfig, captioner=None, batch_size: int = 32):
        from kaleido.patches.backbone import BackboneConfig, create_backbone

        self.cfg, self.captioner, self.batch_size = cfg, captioner, batch_size
        if captioner is not None:
            if captioner.cfg.encoder_input_size != cfg.image_size or captioner.backbone.name != cfg.backbone:
                raise ValueError(f"the captioner reads {captioner.backbone.name} at "
                                 f"{captioner.cfg.encoder_input_size} px; the tag features are "
                                 f"{cfg.backbone} at {cfg.image_size} px")
            self.backbone = captioner.backbone
        else:
            self.backbone = create_backbone(BackboneConfig(name=cfg.backbone))
        self.backbone.eval()

    @property
    def image_dim(self) -> int:
        return self.backbone.feature_dim

    def from_images(self, images: Sequence) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(pooled (N, C), colour (N, D), captions) of PIL images."""
        from sat_captioner.model import encode

        if not images:
            return (np.zeros((0, self.image_dim), np.float32), np.zeros((0, COLOUR_DIM), np.float32), [])
        with torch.inference_mode():
            grid = encode(self.backbone, images, self.cfg.image_size, batch_size=self.batch_size)
            pooled = grid.mean(1).numpy().astype(np.float32)
            captions = ([c.text for c in self.captioner.caption_features(grid, self.cfg.beam_size)]
                        if self.captioner is not None else [""] * len(images))
        colour = np.stack([colour_features(im) for im in images])
        return pooled, colour, captions

    def from_products(self, catalog: Catalog, products: Sequence[Product]) -> FeatureRows:
        """Features of each product's first image; unreadable ones go to ``bad`` with the reason."""
        ids, images, bad = [], [], {}
        for p in products:
            if not p.images:
                bad[p.id] = "no image"
                continue
            try:
                image = catalog.load_image(p)
                image.load()
            except (ImageLoadError, OSError, ValueError) as err:
                bad[p.id] = f"unreadable image: {err}"
                continue
            ids.append(p.id)
            images.append(image)
        pooled, colour, captions = self.from_images(images)
        return FeatureRows(ids, pooled, colour, captions, bad)


class TagFeatureCache:
    """A folder of feature chunks, looked up by product id.

    Args:
        root: the folder (created).
        cfg: the settings its features must have been made with; a folder made with other
            settings raises ``ValueError`` naming the difference.
    """

    def __init__(self, root: str | Path, cfg: TagFeatureConfig):
        self.root, self.cfg = Path(root), cfg
        self.root.mkdir(parents=True, exist_ok=True)
        meta_file = self.root / META_NAME
        wanted = asdict(cfg)
        if meta_file.is_file():
            have = json.loads(meta_file.read_text())
            diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
            if diff:
                raise ValueError(f"feature cache {self.root} was made with other settings "
                                 + ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())
                                 + "; use another --cache folder")
        else:
            _atomic_write_text(meta_file, json.dumps(wanted, indent=2) + "\n")
        self._index: dict[str, tuple[Path, int]] | None = None
        self._bad: dict[str, str] = {}
        self._open: dict[Path, dict] = {}

    def _scan(self) -> None:
        self._index, self._bad = {}, {}
        for file in sorted(self.root.glob("chunk-*.npz")):
            self._add_file(file)

    def _add_file(self, file: Path) -> None:
        with np.load(file, allow_pickle=False) as z:
            for row, pid in enumerate(z["ids"].tolist()):
                self._index[pid] = (file, row)
            self._bad.update(zip(z["bad_ids"].tolist(), z["bad_reasons"].tolist()))

    def __contains__(self, pid: str) -> bool:
        if self._index is None:
            self._scan()
        return pid in self._index or pid in self._bad

    def __len__(self) -> int:
        if self._index is None:
            self._scan()
        return len(self._index)

    def get(self, ids: Sequence[str]) -> FeatureRows:
        """The cached rows of ``ids`` that are there (in that order), bad ones in ``bad``."""
        if self._index is None:
            self._scan()
        found = [i for i in ids if i in self._index]
        bad = {i: self._bad[i] for i in ids if i in self._bad and i not in self._index}
        if not found:
            rows = FeatureRows.empty(0)
            rows.bad = bad
            return rows
        image, colour, caption = [], [], []
        for pid in found:
            file, row = self._index[pid]
            z = self._open.get(file)
            if z is None:
                with np.load(file, allow_pickle=False) as f:
                    z = {k: f[k] for k in ("image", "colour", "caption")}
                if len(self._open) > 64:
                    self._open.clear()
                self._open[file] = z
            image.append(z["image"][row])
            colour.append(z["colour"][row])
            caption.append(str(z["caption"][row]))
        return FeatureRows(found, np.stack(image).astype(np.float32), np.stack(colour).astype(np.float32),
                           caption, bad)

    def put(self, name: str, rows: FeatureRows) -> Path:
        """Write ``rows`` as ``chunk-<name>.npz`` (atomically) and index them."""
        if self._index is None:
            self._scan()
        file = self.root / f"chunk-{name}.npz"
        tmp = file.with_name(file.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, ids=np.array(rows.ids, dtype=str), image=rows.image.astype(np.float16),
                 colour=rows.colour.astype(np.float32), caption=np.array(rows.caption, dtype=str),
                 bad_ids=np.array(list(rows.bad), dtype=str), bad_reasons=np.array(list(rows.bad.values()), dtype=str))
        tmp.replace(file)
        self._add_file(file)
        return file


def ids_digest(ids: Sequence[str]) -> str:
    """A short hash of a list of ids (names of cache chunks, keys of tagging jobs)."""
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


def features_for(products: Sequence[Product], catalog: Catalog, cache: TagFeatureCache,
                 extractor: "TagFeatureExtractor | None") -> FeatureRows:
    """Rows of ``products`` from the cache, the missing ones computed (when an extractor is
    given) and cached as one chunk named by their ids. Products still without features end
    up in ``bad``."""
    ids = [p.id for p in products]
    have = cache.get(ids)
    missing = [p for p in products if p.id not in have.bad and p.id not in set(have.ids)]
    if missing:
        if extractor is None:
            for p in missing:
                have.bad[p.id] = "not in the feature cache (and no images to compute it from)"
        else:
            new = extractor.from_products(catalog, missing)
            cache.put(ids_digest(ids), new)
            have = cache.get(ids)
    return have


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
