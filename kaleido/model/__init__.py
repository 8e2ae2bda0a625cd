"""Kaleido-BERT: the single-stream encoder over text tokens and kaleido patches (DESIGN.md stage 6)."""

from kaleido.model.config import KaleidoBertConfig
from kaleido.model.factory import create_model, create_model_for_patches, list_models, load_bert_weights, model_config
from kaleido.model.modeling import KaleidoBertModel, KaleidoBertOutput, is_kaleido_checkpoint
from kaleido.model.processor import KaleidoProcessor

__all__ = ["KaleidoBertConfig", "KaleidoBertModel", "KaleidoBertOutput", "KaleidoProcessor",
           "create_model", "create_model_for_patches", "list_models", "load_bert_weights", "model_config", "is_kaleido_checkpoint"]
