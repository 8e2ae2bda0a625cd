"""Saving, loading and running a trained captioner.

A run folder (``train_sat``'s output) is read back with :func:`load_sat`;
:class:`Captioner` bundles the frozen backbone, the decoder and the vocabulary and turns
PIL images (optionally cropped to a box, e.g. the saliency box) into captions with the
attention map of every word: what the alignment generator (DESIGN.md stage 4) consumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from kaleido.checkpoint import read_safetensors
from kaleido.config import ConfigError, load_config
from kaleido.patches.backbone import Backbone, create_backbone

from .model import SATConfig, SATDecoder, encode
from .vocab import Vocabulary

log = logging.getLogger(__name__)

MODEL_FILE, CONFIG_FILE, VOCAB_FILE = "model.safetensors", "config.yaml", "vocab.json"
_FORMAT = "kaleido-sat-decoder"


@dataclass
class CaptionResult:
    """The caption of one image.

    Attributes:
        words: the generated words (no ``<start>`` / ``<end>``; ``<unk>`` kept in place).
        token_ids: their vocabulary ids, ``len(token_ids) == len(words)``.
        attention: (T, h, w) float32 attention of each word over the encoder grid (each
            map sums to 1); the grid covers the encoded image or box, row-major.
        score: log-probability of the caption under the decoder.
    """

    words: list[str]
    token_ids: list[int]
    attention: torch.Tensor
    score: float

    @property
    def text(self) -> str:
        return " ".join(self.words)


def save_decoder(decoder: SATDecoder, path: str | Path, epoch: int | None = None) -> Path:
    """Write the decoder's weights as safetensors (sizes needed to rebuild it in metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    meta = {"format": _FORMAT, "vocab_size": str(decoder.vocab_size),
            "feature_dim": str(decoder.feature_dim), "epoch": str(epoch)}
    partial = path.with_suffix(".partial")
    save_file(state, str(partial), metadata=meta)
    partial.replace(path)
    return path


def load_sat(model_dir: str | Path, device: str = "cpu") -> tuple[SATDecoder, Vocabulary, SATConfig]:
    """Read a trained captioner from its run folder.

    Args:
        model_dir: folder holding ``model.safetensors``, ``config.yaml`` and ``vocab.json``.
        device: where to put the decoder.

    Returns:
        ``(decoder in eval mode, vocabulary, model config)``.
    """

    from .train import SATTrainConfig

    folder = Path(model_dir)
    for name in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; is this a `kaleido sat train` run "
                                    f"folder that finished at least one epoch?")
    try:
        cfg = load_config(SATTrainConfig, folder / CONFIG_FILE).model
    except ConfigError as err:
        raise ValueError(f"{folder / CONFIG_FILE}: {err}") from err
    vocab = Vocabulary.load(folder / VOCAB_FILE)
    path = folder / MODEL_FILE
    state, meta = read_safetensors(path)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a SAT decoder (format {meta.get('format')!r})")
    if int(meta["vocab_size"]) != len(vocab):
        raise ValueError(f"{path}: {meta['vocab_size']} words, but {folder / VOCAB_FILE} has "
                         f"{len(vocab)}")
    decoder = SATDecoder(cfg, len(vocab), int(meta["feature_dim"]))
    decoder.load_state_dict(state, strict=True)
    return decoder.to(device).eval(), vocab, cfg


class Captioner:
    """Frozen backbone + SAT decoder + vocabulary: images in, captions with attention out.

    Build it with :meth:`from_pretrained`; pass ``backbone=`` to share one already loaded
    (e.g. the patch generator's) when it is the same network.
    """

    def __init__(self, backbone: Backbone, decoder: SATDecoder, vocab: Vocabulary,
                 cfg: SATConfig):
        if backbone.feature_dim != decoder.feature_dim:
            raise ValueError(f"backbone {backbone.name} gives {backbone.feature_dim}-d features, "
                             f"the decoder was trained on {decoder.feature_dim}-d")
        self.backbone, self.decoder, self.vocab, self.cfg = backbone, decoder.eval(), vocab, cfg

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, backbone: Backbone | None = None,
                        device: str = "cpu") -> "Captioner":
        """Load a run folder; the backbone is created from its config unless given."""
        decoder, vocab, cfg = load_sat(model_dir, device)
        if backbone is None:
            backbone = create_backbone(cfg.backbone).to(device)
        elif backbone.name != cfg.backbone.name:
            log.warning("captioner %s was trained on %s features, given backbone %s",
                        model_dir, cfg.backbone.name, backbone.name)
        return cls(backbone, decoder, vocab, cfg)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the attention maps."""
        side = -(-self.cfg.encoder_input_size // self.backbone.stride)
        return side, side

    def encode(self, images: Sequence[Image.Image], boxes=None) -> torch.Tensor:
        """(B, h*w, C) grid features of images (cropped to ``boxes`` when given)."""
        return encode(self.backbone, images, self.cfg.encoder_input_size, boxes)

    def caption_features(self, features: torch.Tensor, beam_size: int = 3,
                         max_len: int | None = None) -> list[CaptionResult]:
        """Captions of precomputed (B, h*w, C) grid features."""
        device = next(self.decoder.parameters()).device
        features = features.to(device).float()
        if beam_size == 1:
            gens = self.decoder.greedy(features, self.grid, max_len)
        else:
            gens = self.decoder.beam_search(features, beam_size, self.grid, max_len)
        return [CaptionResult(self.vocab.decode(g.token_ids, strip_special=False), g.token_ids,
                              g.attention.float(), g.score) for g in gens]

    def caption(self, images: Sequence[Image.Image], beam_size: int = 3,
                boxes: Sequence[Sequence[float] | None] | None = None,
                max_len: int | None = None) -> list[CaptionResult]:
        """Caption images.

        Args:
            images: PIL images (any size and mode).
            beam_size: beam width (1 = greedy).
            boxes: optional ``(x0, y0, x1, y1)`` pixel box per image (None = whole image);
                the image is cropped to it before encoding and the attention grid covers it.
            max_len: most words per caption (default: the model's ``max_len``).

        Returns:
            One :class:`CaptionResult` per image.
        """
        if not images:
            return []
        return self.caption_features(self.encode(images, boxes), beam_size, max_len)
