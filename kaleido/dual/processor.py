"""The dual encoder's processor: texts -> token ids, cached patches -> tensors, products -> tag text.

The model takes tensors only; everything that reads strings or products lives here.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kaleido.dual.config import DEFAULT_ATTRIBUTE_TEMPLATE
from kaleido.model.processor import pad_ids

PROCESSOR_NAME = "dual_processor.json"
TOKENIZER_DIR = "tokenizer"
_PRODUCT_FIELDS = ("title", "category", "subcategory", "description", "id")


def attribute_text(product, template: str = DEFAULT_ATTRIBUTE_TEMPLATE) -> str:
    """The product's tags as one text (ERNIE-ViL 2.0's second text view).

    Args:
        product: a :class:`~kaleido.data.Product`.
        template: ``str.format`` fields naming ``Product.attributes`` keys or ``category``,
            ``subcategory``, ``title``; missing or empty fields are left out.

    Returns:
        The text with whitespace collapsed, e.g. ``"Navy Blue Men Casual Fall Shirts"``.
    """
    parts = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        parts.append(literal)
        if name:
            value = product.attributes.get(name) if name not in _PRODUCT_FIELDS else getattr(product, name)
            if value is not None and str(value).strip().lower() not in ("", "nan", "none"):
                parts.append(str(value).strip())
    return " ".join("".join(parts).split())


class DualProcessor:
    """Tokenizer + text length + tag template + the patch levels the image tower expects.

    Args:
        tokenizer: a HF tokenizer (the offline MiniLM WordPiece by default).
        max_text_len: tokens per text, [CLS] and [SEP] included.
        attribute_template: see :func:`attribute_text`.
        grids: the patch levels of the feature cache.
        whole_image: the image tower also reads each product's whole-image feature.
    """

    def __init__(self, tokenizer, max_text_len: int = 32,
                 attribute_template: str = DEFAULT_ATTRIBUTE_TEMPLATE, grids: Sequence[int] = (1, 2, 3, 4, 5),
                 whole_image: bool = False):
        if max_text_len < 3:
            raise ValueError(f"max_text_len must be at least 3 ([CLS] word [SEP]), not {max_text_len}")
        self.tokenizer = tokenizer
        self.max_text_len = int(max_text_len)
        self.attribute_template = attribute_template
        self.grids = [int(g) for g in grids]
        self.whole_image = bool(whole_image)

    @classmethod
    def default(cls, max_text_len: int = 32, attribute_template: str = DEFAULT_ATTRIBUTE_TEMPLATE,
                grids: Sequence[int] = (1, 2, 3, 4, 5), tokenizer: str = "minilm",
                whole_image: bool = False) -> "DualProcessor":
        from kaleido.tokenizer import load_tokenizer

        return cls(load_tokenizer(tokenizer), max_text_len, attribute_template, grids, whole_image)

    @property
    def num_patches(self) -> int:
        return sum(g * g for g in self.grids)

    def attribute_text(self, product) -> str:
        return attribute_text(product, self.attribute_template)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Texts -> one int64 id array each (``[CLS] ... [SEP]``, truncated, unpadded)."""
        if not len(texts):
            return []
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_text_len)
        return [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]

    def pad(self, ids: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Right-pad id arrays into ``input_ids`` and ``attention_mask`` (B, T)."""
        out, mask = pad_ids(ids, self.tokenizer.pad_token_id)
        return {"input_ids": out, "attention_mask": mask}

    def texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> padded ``input_ids`` / ``attention_mask``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        return self.pad(self.encode(texts))

    def patches(self, features: Sequence) -> dict[str, torch.Tensor]:
        """Cached :class:`~kaleido.patches.extract.PatchFeatures` (or ``(features, positions)``
        pairs) -> ``patch_features`` (B, P, D), ``patch_positions`` (B, P, 5), ``patch_mask`` (B, P),
        and ``whole_image`` (B, C) when the tower reads it (``PatchFeatures.whole_image``)."""
        feats, pos = [], []
        if self.whole_image:
            missing = [k for k, f in enumerate(features) if getattr(f, "whole_image", None) is None]
            if missing:
                raise ValueError(f"{len(missing)} of {len(features)} images have no whole-image feature; this "
                                 "dual encoder reads it (a cache made by `kaleido patches union --whole-image`)")
        for f in features:
            x, p = (f.features, f.positions) if hasattr(f, "features") else f
            if np.shape(x)[0] != self.num_patches or np.shape(p) != (self.num_patches, 5):
                raise ValueError(f"patch features of shape {np.shape(x)} and positions {np.shape(p)}; this "
                                 f"processor expects {self.num_patches} patches (grids {self.grids})")
            feats.append(np.asarray(x, dtype=np.float32))
            pos.append(np.asarray(p, dtype=np.float32))
        out = {"patch_features": torch.from_numpy(np.stack(feats)),
               "patch_positions": torch.from_numpy(np.stack(pos))}
        out["patch_mask"] = torch.ones(out["patch_features"].shape[:2], dtype=torch.bool)
        if self.whole_image:
            out["whole_image"] = torch.from_numpy(np.stack([np.asarray(f.whole_image, np.float32) for f in features]))
        return out

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
        (path / PROCESSOR_NAME).write_text(json.dumps(
            {"max_text_len": self.max_text_len, "attribute_template": self.attribute_template,
             "grids": self.grids, "whole_image": self.whole_image}, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DualProcessor":
        from transformers import AutoTokenizer

        path = Path(path)
        file = path / PROCESSOR_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no {PROCESSOR_NAME}; not a saved dual encoder "
                                    "(`kaleido dual train` writes RUN/final)")
        cfg = json.loads(file.read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR), local_files_only=True)
        return cls(tokenizer, cfg["max_text_len"], cfg["attribute_template"], cfg["grids"],
                   cfg.get("whole_image", False))
