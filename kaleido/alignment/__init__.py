"""Attention-based Alignment Generator (DESIGN.md stage 4): token <-> patch pre-alignments."""

from .generator import AlignedPair, AlignmentConfig, align_product, patch_scores, word_token_positions
from .store import load_alignments

__all__ = ["AlignedPair", "AlignmentConfig", "align_product", "load_alignments", "patch_scores",
           "word_token_positions"]
