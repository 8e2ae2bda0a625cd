"""Show-Attend-Tell captioner (DESIGN.md stage 3): captions with per-word attention maps."""

from .captioner import CaptionResult, Captioner, load_sat, save_decoder
from .metrics import caption_scores, java_available
from .model import Generation, SATConfig, SATDecoder, SATOutput, encode, sat_losses
from .train import SATTrainConfig, SATTrainResult, train_sat
from .vocab import Vocabulary, normalize_word, tokenize, word_spans

__all__ = [
    "CaptionResult", "Captioner", "Generation", "SATConfig", "SATDecoder", "SATOutput",
    "SATTrainConfig", "SATTrainResult", "Vocabulary", "caption_scores", "encode",
    "java_available", "load_sat", "normalize_word", "save_decoder", "sat_losses", "tokenize",
    "train_sat", "word_spans",
]
