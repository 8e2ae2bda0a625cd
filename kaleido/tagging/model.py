"""The attribute tagger: per-field classifiers over a product's frozen features.

One small network per input mode (``image``: the pooled image feature and the colour
histogram; ``image+title``: those and the MiniLM title embedding), each a shared hidden
layer and one linear head per field (category, subcategory, colour, gender, ...), trained
jointly. Each field's logits are divided by a temperature fitted on the validation split
(:func:`kaleido.tagging.calibration.fit_temperature`), so the probabilities it reports are
calibrated; the per-field thresholds of the flags come from the same split.

Saved HF-style: ``config.json`` (fields, label names, dimensions, thresholds) and
``model.safetensors``; the standardisation of the inputs is part of the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODES = ("image", "image+title")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class TaggerConfig:
    """What a saved tagger needs to rebuild itself."""

    fields: list[str]                        # in output order
    labels: dict[str, list[str]]             # field -> class names (from the training split)
    image_dim: int                           # pooled image feature
    colour_dim: int                          # colour histogram
    text_dim: int                            # title embedding
    hidden: int = 512
    dropout: float = 0.3
    input_dropout: float = 0.2
    modes: list[str] = field(default_factory=lambda: list(MODES))
    # per mode, per field: the calibration temperature and the confidence thresholds
    temperature: dict[str, dict[str, float]] = field(default_factory=dict)
    thresholds: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    features: dict = field(default_factory=dict)  # how the features were made (TagFeatureConfig)
    model_type: str = "kaleido-tagger"


class FieldHeads(nn.Module):
    """Standardised input -> shared hidden layer -> one linear head per field."""

    def __init__(self, in_dim: int, fields: dict[str, int], hidden: int, dropout: float, input_dropout: float):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.trunk = nn.Sequential(nn.Dropout(input_dropout), nn.Linear(in_dim, hidden), nn.GELU(),
                                   nn.Dropout(dropout))
        self.heads = nn.ModuleDict({f: nn.Linear(hidden, n) for f, n in fields.items()})

    def fit_standardisation(self, x: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(x.mean(0)))
        self.std.copy_(torch.from_numpy(x.std(0) + 1e-6))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk((x - self.mean) / self.std)
        return {f: head(h) for f, head in self.heads.items()}


class AttributeTagger(nn.Module):
    """Calibrated per-field probabilities from (image, colour[, title]) features."""

    def __init__(self, cfg: TaggerConfig):
        super().__init__()
        self.cfg = cfg
        sizes = {f: len(cfg.labels[f]) for f in cfg.fields}
        dims = {"image": cfg.image_dim + cfg.colour_dim, "image+title": cfg.image_dim + cfg.colour_dim + cfg.text_dim}
        self.nets = nn.ModuleDict({_key(m): FieldHeads(dims[m], sizes, cfg.hidden, cfg.dropout, cfg.input_dropout)
                                   for m in cfg.modes})

    @staticmethod
    def inputs(mode: str, image: np.ndarray, colour: np.ndarray, text: np.ndarray | None = None) -> np.ndarray:
        """The (N, D) input of ``mode`` from the feature blocks."""
        if mode not in MODES:
            raise ValueError(f"tagger inputs must be one of {MODES}, not {mode!r}")
        parts = [image, colour] + ([text] if mode == "image+title" else [])
        if mode == "image+title" and text is None:
            raise ValueError("inputs=image+title needs the title embeddings")
        return np.concatenate(parts, 1).astype(np.float32)

    def net(self, mode: str) -> FieldHeads:
        if _key(mode) not in self.nets:
            raise ValueError(f"this tagger has no {mode!r} network (it has {self.cfg.modes})")
        return self.nets[_key(mode)]

    def logits(self, mode: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(mode)(x)

    @torch.no_grad()
    def predict_proba(self, mode: str, x: np.ndarray, calibrated: bool = True) -> dict[str, np.ndarray]:
        """``{field: (N, C) probabilities}`` of raw (N, D) inputs (``calibrated=False``: before
        the temperatures)."""
        self.eval()
        logits = self.logits(mode, torch.from_numpy(np.asarray(x, np.float32)))
        temps = self.cfg.temperature.get(mode, {}) if calibrated else {}
        return {f: torch.softmax(z / temps.get(f, 1.0), -1).numpy() for f, z in logits.items()}

    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        save_model(self, str(path / WEIGHTS_NAME))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "AttributeTagger":
        from safetensors.torch import load_model

        path = Path(path)
        file = path / CONFIG_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not a saved tagger "
                                    "(`kaleido tagger train` writes one)")
        raw = json.loads(file.read_text())
        if raw.get("model_type") != TaggerConfig.model_type:
            raise ValueError(f"{file}: model_type is {raw.get('model_type')!r}, not {TaggerConfig.model_type!r}")
        model = cls(TaggerConfig(**raw))
        load_model(model, str(path / WEIGHTS_NAME), strict=True)
        return model.eval()


def _key(mode: str) -> str:
    return mode.replace("+", "_")  # ModuleDict keys cannot hold '+' in state-dict names sensibly
