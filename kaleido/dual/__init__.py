"""The dual encoder (ERNIE-ViL 2.0 style) for catalog-scale search.

    from kaleido.dual import create_dual_encoder, load_dual, embed_texts, embed_products
    model = create_dual_encoder("default")              # MiniLM text tower, patch-transformer image tower
    model, processor = load_dual("runs/dual/final")     # a trained one
    text = embed_texts(model, processor, ["red floral summer dress"])   # (1, 256) unit vectors

Training: :func:`train_dual` (``kaleido dual train``); the loss: :class:`MultiViewInfoNCE`;
zero-shot labels: :func:`zero_shot_probabilities`, :func:`zero_shot_predict`.
"""

from .config import (AugmentConfig, DualDataConfig, DualEncoderConfig, DualLossConfig, DualRunConfig,
                     ImageTowerConfig, TextTowerConfig)
from .data import DualCollator, DualDataset
from .encode import embed_patches, embed_products, embed_texts, load_dual
from .evaluate import DualEvalConfig, evaluate_dual
from .loss import MultiViewInfoNCE, gather_with_grad, pair_info_nce
from .modeling import DualEncoder, create_dual_encoder, is_dual_encoder
from .processor import DualProcessor, attribute_text
from .run import build_dual_task, train_dual
from .task import DualTask
from .zeroshot import label_embeddings, zero_shot_predict, zero_shot_probabilities

__all__ = [
    "AugmentConfig", "DualCollator", "DualDataConfig", "DualDataset", "DualEncoder", "DualEncoderConfig",
    "DualEvalConfig", "DualLossConfig", "DualProcessor", "DualRunConfig", "DualTask", "ImageTowerConfig",
    "MultiViewInfoNCE", "TextTowerConfig", "attribute_text", "build_dual_task", "create_dual_encoder",
    "embed_patches", "embed_products", "embed_texts", "evaluate_dual", "gather_with_grad", "is_dual_encoder",
    "label_embeddings", "load_dual", "pair_info_nce", "train_dual", "zero_shot_predict",
    "zero_shot_probabilities",
]
