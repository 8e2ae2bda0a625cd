"""The processor: text -> WordPiece ids, cached patch features -> tensors. Models take tensors only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kaleido.patches.geometry import KALEIDO_GRIDS, num_patches

PROCESSOR_NAME = "processor_config.json"
TOKENIZER_DIR = "tokenizer"


def pad_ids(rows: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id arrays: ``(ids, attention_mask)``, both (B, T) int64, T the longest row."""
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class KaleidoProcessor:
    """Tokeniser (``[CLS] text [SEP]``, at most ``max_text_len`` tokens) plus patch inputs.

    Args:
        tokenizer: a fast HF tokenizer (offsets and word ids are needed for masking).
        max_text_len: text length including [CLS] and [SEP] (the paper: 64).
        grids: the patch levels the features were cut at.
    """

    def __init__(self, tokenizer, max_text_len: int = 64, grids: Sequence[int] = KALEIDO_GRIDS):
        if max_text_len < 3:
            raise ValueError(f"max_text_len must be at least 3 ([CLS] word [SEP]), not {max_text_len}")
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.grids = list(grids)

    @classmethod
    def default(cls, max_text_len: int = 64, tokenizer: str = "minilm", grids=KALEIDO_GRIDS):
        from kaleido.tokenizer import load_tokenizer
        return cls(load_tokenizer(tokenizer), max_text_len, grids)

    @property
    def num_patches(self) -> int:
        return num_patches(self.grids)

    def encode_text(self, text: str) -> tuple[np.ndarray, list[int | None]]:
        """One text -> (ids of ``[CLS] text [SEP]``, the word index of every token)."""
        enc = self.tokenizer(text, truncation=True, max_length=self.max_text_len)
        return np.asarray(enc["input_ids"], dtype=np.int64), enc.word_ids()

    def pad_text(self, ids: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Right-pad token id arrays into ``input_ids`` and ``attention_mask`` (B, T)."""
        out, mask = pad_ids(ids, self.tokenizer.pad_token_id)
        return {"input_ids": out, "attention_mask": mask}

    def patches(self, features: Sequence) -> dict[str, torch.Tensor]:
        """Cached :class:`~kaleido.patches.PatchFeatures` -> ``patch_features`` (B, P, D), ``patch_positions`` (B, P, 5)."""
        for f in features:
            if f.features.shape[0] != self.num_patches:
                raise ValueError(f"patch features with {f.features.shape[0]} patches; this processor "
                                 f"expects {self.num_patches} (grids {self.grids})")
        return {"patch_features": torch.from_numpy(np.stack([f.features for f in features]).astype(np.float32)),
                "patch_positions": torch.from_numpy(np.stack([f.positions for f in features]).astype(np.float32))}

    def __call__(self, texts: Sequence[str] | None = None, features: Sequence | None = None) -> dict:
        """Batch tensors for :class:`~kaleido.model.KaleidoBertModel` from texts and/or patch features."""
        out: dict[str, torch.Tensor] = {}
        if texts is not None:
            out.update(self.pad_text([self.encode_text(t)[0] for t in texts]))
        if features is not None:
            out.update(self.patches(features))
        return out

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # In its own folder: AutoTokenizer would otherwise read the model's config.json.
        self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
        (path / PROCESSOR_NAME).write_text(json.dumps(
            {"max_text_len": self.max_text_len, "grids": self.grids}, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "KaleidoProcessor":
        from transformers import AutoTokenizer

        path = Path(path)
        file = path / PROCESSOR_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no {PROCESSOR_NAME}; not a saved Kaleido processor")
        cfg = json.loads(file.read_text())
        folder = path / TOKENIZER_DIR
        if not folder.is_dir():  # written before the tokenizer had its own folder
            folder = path
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(tokenizer, cfg["max_text_len"], cfg["grids"])
