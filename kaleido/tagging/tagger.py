"""The tagger as a user holds it: a saved folder in, tags of products or photos out.

A tagger folder (``kaleido tagger train`` writes it) holds the attribute networks
(``config.json``, ``model.safetensors``) and, in ``captioner/``, the Show-Attend-Tell run its
captions and image features come from. :class:`Tagger` loads both once and turns
:class:`~kaleido.tagging.features.FeatureRows` (from a cache or from images) into
:class:`Tags`: per field the top classes with calibrated probabilities and the flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kaleido.tagging.features import FeatureRows, TagFeatureConfig, TagFeatureExtractor, captioner_fingerprint
from kaleido.tagging.model import MODES, AttributeTagger

CAPTIONER_DIR = "captioner"
INPUTS = MODES + ("auto",)


@dataclass
class FieldTag:
    """One field of one product."""

    label: str
    prob: float
    top: list[tuple[str, float]]      # the top-k (label, probability), best first
    low_confidence: bool
    catalog: str = ""                 # the catalog's own label ('' = none)
    disagrees: bool = False           # a confident prediction that differs from ``catalog``


@dataclass
class Tags:
    """Everything the tagger says about one product."""

    id: str
    inputs: str                       # the input mode used (image | image+title)
    caption: str
    fields: dict[str, FieldTag] = field(default_factory=dict)

    @property
    def low_confidence_fields(self) -> list[str]:
        return [f for f, t in self.fields.items() if t.low_confidence]

    @property
    def disagreeing_fields(self) -> list[str]:
        return [f for f, t in self.fields.items() if t.disagrees]

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_tagger_path(name_or_path: str | Path) -> Path:
    """A tagger folder, or the ``tagger/`` of a released model in ``models/<name>``."""
    from kaleido.release import release_candidates

    path, release = release_candidates(name_or_path)
    for c in (path, path / "tagger", release / "tagger"):
        if (c / "config.json").is_file():
            return c
    raise FileNotFoundError(f"{name_or_path}: not a tagger folder (no config.json; `kaleido tagger train "
                            "--out DIR` writes one) nor a released model under models/")


class Tagger:
    """Attribute networks + captioner + title encoder, loaded once.

    Args:
        model: the attribute networks.
        captioner: the SAT captioner (None: no captions, image features from the backbone alone).
    """

    def __init__(self, model: AttributeTagger, captioner=None):
        self.model, self.captioner = model, captioner
        self.feature_cfg = TagFeatureConfig(**model.cfg.features)
        self._extractor: TagFeatureExtractor | None = None
        self._titles = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "Tagger":
        path = resolve_tagger_path(name_or_path)
        model = AttributeTagger.from_pretrained(path)
        captioner = None
        if (path / CAPTIONER_DIR).is_dir():
            from sat_captioner.captioner import Captioner

            captioner = Captioner.from_pretrained(path / CAPTIONER_DIR)
            have = captioner_fingerprint(path / CAPTIONER_DIR)
            if model.cfg.features.get("captioner") and have != model.cfg.features["captioner"]:
                raise ValueError(f"{path / CAPTIONER_DIR} is not the captioner this tagger was trained with")
        return cls(model, captioner)

    @property
    def fields(self) -> list[str]:
        return list(self.model.cfg.fields)

    @property
    def extractor(self) -> TagFeatureExtractor:
        """The image -> features path (built on first use: the backbone loads then)."""
        if self._extractor is None:
            self._extractor = TagFeatureExtractor(self.feature_cfg, self.captioner)
        return self._extractor

    def title_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        if self._titles is None:
            from kaleido.baselines.features import TitleEncoder

            self._titles = TitleEncoder()
        return self._titles(list(titles))

    def probabilities(self, rows: FeatureRows, titles: Sequence[str] | None, mode: str) -> dict[str, np.ndarray]:
        """Calibrated ``{field: (N, C)}`` for ``rows`` in one input mode."""
        text = self.title_embeddings(titles) if mode == "image+title" else None
        return self.model.predict_proba(mode, AttributeTagger.inputs(mode, rows.image, rows.colour, text))

    def tag(self, rows: FeatureRows, titles: Sequence[str] | None = None, inputs: str = "auto",
            catalog_labels: Sequence[dict] | None = None, top_k: int = 3) -> list[Tags]:
        """Tags of ``rows`` (bad rows are not in ``rows.ids`` and get none).

        Args:
            rows: the products' features.
            titles: their titles, row-aligned (needed for ``image+title`` / ``auto``).
            inputs: ``image``, ``image+title``, or ``auto`` (image + title where the title is
                not empty, the image alone elsewhere).
            catalog_labels: per row, the catalog's ``{field: label}`` (for ``disagrees``).
            top_k: how many classes each field lists.
        """
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, not {inputs!r}")
        n = len(rows.ids)
        titles = list(titles) if titles is not None else [""] * n
        if inputs != "image" and len(titles) != n:
            raise ValueError(f"{len(titles)} titles for {n} products")
        modes = [("image+title" if titles[i].strip() else "image") if inputs == "auto" else inputs for i in range(n)]
        if inputs == "image+title" and not all(t.strip() for t in titles):
            raise ValueError("inputs=image+title but some products have no title; use inputs=auto")
        out: list[Tags | None] = [None] * n
        for mode in MODES:
            idx = [i for i in range(n) if modes[i] == mode]
            if not idx:
                continue
            sub = FeatureRows([rows.ids[i] for i in idx], rows.image[idx], rows.colour[idx],
                              [rows.caption[i] for i in idx], {})
            probs = self.probabilities(sub, [titles[i] for i in idx], mode)
            thresholds = self.model.cfg.thresholds.get(mode, {})
            for j, i in enumerate(idx):
                tags = Tags(rows.ids[i], mode, rows.caption[i])
                for f in self.fields:
                    p = probs[f][j]
                    order = np.argsort(-p)[:top_k]
                    names = self.model.cfg.labels[f]
                    label, prob = names[order[0]], float(p[order[0]])
                    th = thresholds.get(f, {"low_confidence": 0.0, "disagree": float("inf")})
                    catalog = (catalog_labels[i].get(f, "") if catalog_labels is not None else "") or ""
                    tags.fields[f] = FieldTag(label, prob, [(names[k], float(p[k])) for k in order],
                                              low_confidence=prob < th["low_confidence"], catalog=catalog,
                                              disagrees=bool(catalog) and catalog != label and prob >= th["disagree"])
                out[i] = tags
        return out  # type: ignore[return-value]

    def tag_images(self, images: Sequence, titles: Sequence[str] | None = None, inputs: str = "image",
                   top_k: int = 3) -> list[Tags]:
        """Tags of PIL images (e.g. a shopper's upload)."""
        pooled, colour, captions = self.extractor.from_images(list(images))
        rows = FeatureRows([str(i) for i in range(len(images))], pooled, colour, captions, {})
        return self.tag(rows, titles, inputs, top_k=top_k)
