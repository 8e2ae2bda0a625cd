"""Reference systems every results table is read against (the linear probe)."""

from kaleido.baselines.features import GlobalFeatureConfig, image_features, title_embeddings
from kaleido.baselines.linear_probe import (LinearDualEncoder, LinearProbeConfig, ProbeEvalConfig,
                                            retrieval_from_scores, run_linear_probe)

__all__ = ["GlobalFeatureConfig", "image_features", "title_embeddings", "LinearDualEncoder",
           "LinearProbeConfig", "ProbeEvalConfig", "retrieval_from_scores", "run_linear_probe"]
