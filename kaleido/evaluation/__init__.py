"""Evaluation (DESIGN.md stage 8 and protocol KB-101): retrieval draws, metrics, paper tables."""

from .kb101 import KB101Config, RetrievalDraw, describe, sample_draw, sample_kb101
from .metrics import (
    classification_metrics,
    full_catalog_ranks,
    ranks_from_scores,
    recall_at_k,
    retrieval_summary,
)
from .tables import (
    format_full_catalog,
    format_itm,
    format_table2,
    format_table3,
    retrieval_systems,
    to_jsonable,
)

__all__ = ["KB101Config", "RetrievalDraw", "classification_metrics", "describe",
           "format_full_catalog", "format_itm", "format_table2", "format_table3", "full_catalog_ranks",
           "ranks_from_scores", "recall_at_k", "retrieval_summary", "retrieval_systems", "sample_draw",
           "sample_kb101", "to_jsonable"]
